"""Layer-local comparison of an OpenVINO IR with the torch fake-quant model it was exported from.

1. :func:`name_fake_quantize_nodes` gives every FakeQuantize node of the ONNX graph the torch module
   path of its FakeQuantize as its name (unique; the IR keeps it as the node's friendly name) and
   records its levels and ranges, and whether its input is a constant (a weight).
2. :func:`run_probe` runs the IR with every activation FakeQuantize's input and output as extra
   outputs, FakeQuantize simulated in f32 (the CPU plugin's low-precision transformations off).
3. :func:`run_torch_fed` runs the torch model and, at every FakeQuantize call, compares torch's input
   and level with the IR's (:func:`torchpqt.exporters._compare.compare_fake_quantize`), then hands the
   IR's levels downstream, so each layer is judged on the same upstream values and a rounding tie that
   flipped one level upstream does not count again below.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
import openvino as ov
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from torchpqt.quant.fake_quantize import FakeQuantize, _dequantize

from . import onnx as onnx_export
from ._compare import FQStats, Tolerances, compare_fake_quantize

__all__ = ["FQNode", "ProbeRun", "TorchRun", "name_fake_quantize_nodes", "run_probe", "run_torch_fed"]

_OP = torch.ops.torchpqt.fake_quantize.default
# FakeQuantize as f32 arithmetic: no low-precision transformations (LP_TRANSFORMS_MODE, an internal key of
# the CPU plugin), and no dynamic int8 quantization of the activations of FullyConnected ops whose weights
# are int8 constants (on by default on CPUs with VNNI/AMX: 0.3 % output error measured on a classifier head)
SIMULATE_F32 = {"INFERENCE_PRECISION_HINT": "f32", "LP_TRANSFORMS_MODE": False, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}


@dataclass(frozen=True)
class FQNode:
    """One FakeQuantize node of the exported ONNX graph."""

    name: str                      # unique; the IR node's friendly name
    levels: int
    ranges: tuple | None           # (il, ih, ol, oh) as numpy arrays, None when not constants
    constant: bool                 # its input does not depend on the model inputs (a weight)


def name_fake_quantize_nodes(proto: onnx.ModelProto) -> list[FQNode]:
    """Renames the FakeQuantize nodes of ``proto`` (in place) after their torch modules; returns them in order."""
    graph = proto.graph
    consts = onnx_export._constants(graph)
    dynamic = {i.name for i in graph.input}
    seen: Counter = Counter()
    nodes = []
    for node in graph.node:
        has_graph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if has_graph or any(i in dynamic for i in node.input):
            dynamic.update(node.output)
        if node.op_type != "FakeQuantize" or node.domain != onnx_export.OV_DOMAIN:
            continue
        base = onnx_export.fake_quantize_name(node)
        seen[base] += 1
        node.name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        ranges = tuple(consts.get(i) for i in node.input[1:5])
        levels = next(a.i for a in node.attribute if a.name == "levels")
        nodes.append(FQNode(node.name, int(levels), None if any(r is None for r in ranges) else ranges,
                            node.input[0] not in dynamic))
    return nodes


def _constant(output: ov.Output) -> np.ndarray | None:
    node = output.get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


@dataclass
class ProbeRun:
    """The IR run with FakeQuantize simulated in f32: outputs, and per FakeQuantize name the
    ``(x, y, il, ih, ol, oh)`` of every IR node of that name."""

    outputs: list[np.ndarray]
    fake_quantize: dict[str, list[tuple]] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)   # IR FakeQuantize nodes no torch FakeQuantize is named after
    simulated: bool = True                           # False: the plugin refused LP_TRANSFORMS_MODE (int8 run)


def run_probe(saved: ov.Model, fq_nodes: list[FQNode], feed, device: str = "CPU") -> ProbeRun:
    """Runs ``saved`` on ``feed`` with each activation FakeQuantize's input and output as extra outputs."""
    model = saved.clone()
    known = {n.name for n in fq_nodes}
    probed, extra = [], []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize" or _constant(op.input_value(0)) is not None:
            continue
        ranges = [_constant(op.input_value(i)) for i in range(1, 5)]
        if op.get_friendly_name() not in known or any(r is None for r in ranges):
            extra.append(op.get_friendly_name())
            continue
        probed.append((op.get_friendly_name(), ranges, int(op.get_attributes()["levels"])))
        model.add_results([ov.opset13.result(op.input_value(0)), ov.opset13.result(op.output(0))])
    n_out = len(saved.outputs)
    compiled, simulated = _compile_simulated(model, device)
    result = compiled(feed)
    values = [np.asarray(result[o]) for o in compiled.outputs]
    run = ProbeRun(outputs=values[:n_out], extra=extra, simulated=simulated)
    for k, (name, ranges, _levels) in enumerate(probed):
        x, y = values[n_out + 2 * k], values[n_out + 2 * k + 1]
        run.fake_quantize.setdefault(name, []).append((x, y, *ranges))
    return run


def _compile_simulated(model: ov.Model, device: str) -> tuple[ov.CompiledModel, bool]:
    core = ov.Core()
    try:
        return core.compile_model(model, device, SIMULATE_F32), True
    except RuntimeError:  # an OpenVINO or device without these keys: drop them one by one
        pass
    for key in ("LP_TRANSFORMS_MODE", "DYNAMIC_QUANTIZATION_GROUP_SIZE"):
        config = {k: v for k, v in SIMULATE_F32.items() if k != key}
        try:
            return core.compile_model(model, device, config), key != "LP_TRANSFORMS_MODE"
        except RuntimeError:
            continue
    from .openvino import compile_or_explain  # here: openvino imports this module

    return compile_or_explain(core, model, device, {"INFERENCE_PRECISION_HINT": "f32"}, simulated=True), False


@dataclass
class TorchRun:
    """The torch model fed the IR's levels: its outputs, one :class:`FQStats` per FakeQuantize call
    compared, and what could not be compared (missing in the IR, a layout the converter changed)."""

    outputs: list[np.ndarray] = field(default_factory=list)
    stats: list[FQStats] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    module: str | None = None  # the FakeQuantize module running now, for messages


class _Matcher:
    """Finds the ONNX FakeQuantize node of a torch FakeQuantize call: same levels and ranges, in graph order.

    A node already matched is matched again only by a call on the same input (two identical calls that
    torch.export merged into one node); a call with no node left is not in the exported graph.
    """

    def __init__(self, nodes: list[FQNode]) -> None:
        self.nodes, self.inputs, self.next = nodes, {}, 0

    def _fits(self, node: FQNode, levels: int, ranges: list[np.ndarray]) -> bool:
        if node.levels != levels:
            return False
        return node.ranges is None or all(_equal(a, b) for a, b in zip(node.ranges, ranges))

    def match(self, levels: int, ranges: list[np.ndarray], x: torch.Tensor) -> FQNode | None:
        order = list(range(self.next, len(self.nodes))) + list(range(self.next))
        fitting = [i for i in order if self._fits(self.nodes[i], levels, ranges)]
        fresh = [i for i in fitting if i not in self.inputs]
        if fresh:
            i = fresh[0]
            self.inputs[i], self.next = x, max(self.next, i + 1)
            return self.nodes[i]
        same = [i for i in fitting if self.inputs[i].shape == x.shape and torch.equal(self.inputs[i], x)]
        return self.nodes[same[0]] if same else None


def _equal(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        return False
    return a.size == b.size and bool(np.array_equal(np.broadcast_to(a, shape), np.broadcast_to(b, shape)))


class _FeedIRLevels(TorchDispatchMode):
    def __init__(self, matcher: _Matcher, probe: ProbeRun, run: TorchRun, tol: Tolerances) -> None:
        super().__init__()
        self.matcher, self.probe, self.run, self.tol = matcher, probe, run, tol

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return self._on_fake_quantize(args, out) if func is _OP else out

    def _on_fake_quantize(self, args, out):
        x, il, ih, ol, oh, levels = args
        ranges_t = [t.detach().cpu().float().numpy() for t in (il, ih, ol, oh)]
        node = self.matcher.match(int(levels), ranges_t, x)
        module, self.run.module = self.run.module, None
        if node is None:
            if not isinstance(x, torch.nn.Parameter):
                what = f"'{module}'" if module else \
                    f"with {levels} levels and range [{ranges_t[0].min():.4g}, {ranges_t[1].max():.4g}]"
                self.run.missing.append(f"FakeQuantize {what} of the torch model is not in the exported graph")
            return out
        if node.constant:
            return out
        candidates = [c for c in self.probe.fake_quantize.get(node.name, []) if c[1].shape == tuple(out.shape)]
        if not candidates:
            if node.name in self.probe.fake_quantize:
                self.run.not_compared.append(node.name)  # the converter moved it (e.g. through a Transpose)
            else:
                self.run.missing.append(f"FakeQuantize '{node.name}' is not in the IR")
            return out
        x_t, y_t = x.detach().cpu().float().numpy(), out.detach().cpu().float().numpy()
        best = min((compare_fake_quantize(node.name, node.levels, c, (x_t, y_t, *ranges_t), self.tol) for c in candidates),
                   key=lambda r: (r[0].excess_deviation, r[0].flips))
        stats, q_ir = best
        self.run.stats.append(stats)
        fed = _dequantize(torch.from_numpy(q_ir).to(out.device, torch.float32), ol.float(), oh.float(), int(levels))
        return fed.to(out.dtype)


def run_torch_fed(qmodel: torch.nn.Module, args: tuple, kwargs: dict, fq_nodes: list[FQNode],
                  probe: ProbeRun, tol: Tolerances) -> TorchRun:
    """Runs ``qmodel`` feeding each FakeQuantize's downstream with the IR's levels (see the module doc)."""
    run = TorchRun()

    def enter(name):
        return lambda module, inputs: setattr(run, "module", name)

    hooks = [m.register_forward_pre_hook(enter(name)) for name, m in qmodel.named_modules()
             if isinstance(m, FakeQuantize)]
    try:
        with onnx_export.eval_mode(qmodel), torch.no_grad(), _FeedIRLevels(_Matcher(fq_nodes), probe, run, tol):
            out = qmodel(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    leaves = torch.utils._pytree.tree_leaves(out)
    run.outputs = [t.detach().cpu().float().numpy() for t in leaves if isinstance(t, torch.Tensor)]
    return run
