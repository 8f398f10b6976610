"""Export a fake-quantized torch model to ONNX.

Every ``torchpqt.FakeQuantize`` (the custom op ``torchpqt::fake_quantize``) becomes one ONNX node
``FakeQuantize`` in domain ``org.openvinotoolkit`` (attribute ``levels``; the four ranges as
broadcastable initializers), which OpenVINO's ONNX frontend reads as opset1 FakeQuantize.
``format="qdq"`` writes QuantizeLinear/DequantizeLinear pairs instead, only where they are the
same grid, and raises :class:`~torchpqt.errors.ExportError` naming the FakeQuantize otherwise.

The dynamo exporter (``torch.export`` + onnxscript) is used; the TorchScript exporter is only a
fallback for models ``torch.export`` cannot capture.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

import torchpqt.quant.fake_quantize  # noqa: F401 -- registers torch.ops.torchpqt.fake_quantize
from torchpqt.errors import ExportError
from torchpqt.inputs import split_inputs
from torchpqt.quant.trainable import frozen_copy

__all__ = ["OV_DOMAIN", "export", "export_proto"]

logger = logging.getLogger("torchpqt")

OV_DOMAIN = "org.openvinotoolkit"
_OP = torch.ops.torchpqt.fake_quantize.default
_MAX_PROTO_BYTES = 1_800_000_000  # below protobuf's 2 GiB limit; larger models use external data
_ZP_TOLERANCE = 1e-3  # a POT-aligned zero point, stored through f32 ranges, is this close to an integer


def export(qmodel: torch.nn.Module, example_inputs: Any, path: str | Path, *, opset: int | None = None,
           format: str = "fakequantize", dynamic_batch: bool = True) -> Path:
    """Exports ``qmodel`` to an ONNX file.

    Args:
        qmodel: a torch module (or ``torch.fx.GraphModule``) whose quantization points are
            ``torchpqt.FakeQuantize`` modules or ``torch.ops.torchpqt.fake_quantize`` calls.
        example_inputs: a tensor, a tuple/list of positional inputs, or a dict of keyword inputs.
        path: the ``.onnx`` file to write (parent folders are created).
        opset: default-domain ONNX opset; None lets torch choose.
        format: ``"fakequantize"`` (OpenVINO FakeQuantize nodes) or ``"qdq"``
            (QuantizeLinear/DequantizeLinear, only where exactly equivalent).
        dynamic_batch: make dim 0 of every tensor input dynamic; falls back to static shapes
            (with a warning) when the model was captured with a fixed batch.

    Returns:
        The path written.

    Raises:
        ExportError: the model cannot be exported, or a FakeQuantize has no exact QDQ form.
    """
    if format not in ("fakequantize", "qdq"):
        raise ExportError(f"torchpqt.exporters.onnx: format must be 'fakequantize' or 'qdq', got {format!r}")
    proto = export_proto(qmodel, example_inputs, opset=opset, dynamic_batch=dynamic_batch)
    if format == "qdq":
        proto = _to_qdq(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    large = proto.ByteSize() > _MAX_PROTO_BYTES
    onnx.save_model(proto, str(path), save_as_external_data=large,
                    location=path.name + ".data" if large else None)
    logger.info("wrote ONNX model %s (%d FakeQuantize nodes)", path,
                sum(n.op_type == "FakeQuantize" for n in proto.graph.node))
    return path


def export_proto(qmodel: torch.nn.Module, example_inputs: Any, *, opset: int | None = None,
                 dynamic_batch: bool = True) -> onnx.ModelProto:
    """Like :func:`export` with ``format="fakequantize"``, returning the in-memory ModelProto."""
    qmodel = frozen_copy(qmodel)  # trained ranges as constants; the caller's model keeps training
    args, kwargs = _normalize_inputs(example_inputs)
    with eval_mode(qmodel):
        return _export_any(qmodel, args, kwargs, opset, dynamic_batch)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Runs a block with ``model`` in eval mode and restores the user's flag afterwards."""
    was_training = model.training
    try:
        model.eval()
    except NotImplementedError:  # torch.export's .module() has no train/eval switch; it is fixed
        yield model
        return
    try:
        yield model
    finally:
        model.train(was_training)


def _normalize_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    return split_inputs(example_inputs, error=ExportError, where="torchpqt.exporters: example_inputs")


def _batch_dims(value: Any) -> Any:
    from torch.export import Dim

    return {0: Dim.DYNAMIC} if isinstance(value, torch.Tensor) and value.dim() > 0 else None


def _export_any(model, args, kwargs, opset, dynamic_batch) -> onnx.ModelProto:
    attempts = [True, False] if dynamic_batch else [False]
    errors = []
    for dynamic in attempts:
        try:
            return _export_dynamo(model, args, kwargs, opset, dynamic)
        except Exception as exc:  # noqa: BLE001 -- torch raises many types here; all are reported below
            errors.append(f"dynamo ({'dynamic' if dynamic else 'static'} batch): {_first_line(exc)}")
            if dynamic:
                logger.warning("export with a dynamic batch failed (%s); retrying with static "
                               "shapes", _first_line(exc))
    try:
        logger.warning("torch.export could not capture the model; falling back to the "
                       "TorchScript ONNX exporter")
        return _export_torchscript(model, args, kwargs, opset, dynamic_batch)
    except Exception as exc:  # noqa: BLE001 -- reported in the ExportError below
        errors.append(f"torchscript: {_first_line(exc)}")
    raise ExportError("torchpqt.exporters.onnx: could not export the model to ONNX; make it capturable by "
                      "torch.export (see its error below) or pass example_inputs that match forward().\n  "
                      + "\n  ".join(errors))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and "Refer to the full stack" not in ln]
    summary = [ln for ln in lines if ln.startswith("<class")]
    return (summary[-1] if summary else lines[0] if lines else type(exc).__name__)[:500]


def _fake_quantize_translation():
    """onnxscript translation of the custom op to one org.openvinotoolkit FakeQuantize node."""
    from onnx.defs import OpSchema
    from onnxscript import values

    ranges = ("X", "input_low", "input_high", "output_low", "output_high")
    schema = OpSchema("FakeQuantize", OV_DOMAIN, 1,
                      inputs=[OpSchema.FormalParameter(n, "T") for n in ranges],
                      outputs=[OpSchema.FormalParameter("Y", "T")],
                      type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
                      attributes=[OpSchema.Attribute("levels", OpSchema.AttrType.INT, "quantization levels")])
    op = values.Op(values.Opset(OV_DOMAIN, 1), "FakeQuantize", schema)

    def fake_quantize(x, input_low, input_high, output_low, output_high, levels: int):
        return op(x, input_low, input_high, output_low, output_high, levels=levels)

    return fake_quantize


class _DropRecords(logging.Filter):
    """Drops the log records whose message starts with one of ``prefixes`` (sent to torchpqt's debug log)."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self.prefixes):
            logger.debug("%s: %s", record.name, record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _quiet_dynamo_export():
    """What torch.onnx.export(dynamo=True) tells every user and no user can act on, silenced for that call:
    one warning per torchvision op its registry skips when torchvision is not installed (logged on the
    registry's own logger), and typing_extensions' FutureWarning about ``LeafSpec`` that torch's own
    deepcopy of the module call graph raises in run_decompositions."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    drop = _DropRecords(("torchvision is not installed",))
    registry.addFilter(drop)
    # onnxscript's constant folder tries to evaluate shape arithmetic on symbolic sizes, fails, keeps the node
    # and warns "Evaluation failed: cannot reshape ..." (the graph is correct, nothing to act on)
    folding = logging.getLogger("onnxscript.optimizer._constant_folding")
    failed = _DropRecords(("Evaluation failed",))
    folding.addFilter(failed)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                                    category=FutureWarning)
            # the constant folder evaluates shape subgraphs with onnx's reference ops: log(0) of a relative
            # position's first bucket warns "divide by zero", a cast of its -inf "invalid value"
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"onnx\.reference")
            yield
    finally:
        registry.removeFilter(drop)
        folding.removeFilter(failed)


def _export_dynamo(model, args, kwargs, opset, dynamic) -> onnx.ModelProto:
    dynamic_shapes = None
    if dynamic:
        dynamic_shapes = {k: _batch_dims(v) for k, v in kwargs.items()} if kwargs else \
            tuple(_batch_dims(a) for a in args)
    # torch.onnx reports progress on stdout; a library must not print, so it goes to the log
    out = io.StringIO()
    with contextlib.redirect_stdout(out), _quiet_dynamo_export(), warnings.catch_warnings():
        # eval_mode() already switched what can be switched (torch.export's .module() cannot)
        warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
        program = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True, verbose=False,
                                    opset_version=opset, dynamic_shapes=dynamic_shapes,
                                    custom_translation_table={_OP: _fake_quantize_translation()})
    logger.debug("torch.onnx: %s", out.getvalue().strip())
    return program.model_proto


def _torchscript_symbolic(g, x, input_low, input_high, output_low, output_high, levels):
    from torch.onnx import symbolic_helper

    y = g.op(f"{OV_DOMAIN}::FakeQuantize", x, input_low, input_high, output_low, output_high,
             levels_i=symbolic_helper._maybe_get_const(levels, "i"))
    y.setType(x.type())  # the exporter needs the shape of what feeds Conv/MatMul
    return y


def _export_torchscript(model, args, kwargs, opset, dynamic_batch) -> onnx.ModelProto:
    torch.onnx.register_custom_op_symbolic("torchpqt::fake_quantize", _torchscript_symbolic, 9)
    if kwargs:
        raise ExportError("torchpqt.exporters.onnx: the TorchScript fallback takes positional inputs only")
    names = [f"input_{i}" for i in range(len(args))]
    dynamic_axes = {n: {0: "batch"} for n, a in zip(names, args)
                    if dynamic_batch and isinstance(a, torch.Tensor) and a.dim() > 0}
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        torch.onnx.export(model, args, buffer, dynamo=False, input_names=names, dynamic_axes=dynamic_axes,
                          opset_version=opset or 17, custom_opsets={OV_DOMAIN: 1})
    traced = []
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning):
            traced.append(w)
        else:  # anything else is not ours to judge: passed on as it came
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if traced:  # torch's own text is one warning per spot and talks of "the trace"; one line names the risk
        first = traced[0]
        logger.warning("TorchScript tracing froze %d Python value(s) of the example inputs into the IR (first: %s:%d, "
                       "%s); the IR takes the branches those inputs took: check it on other inputs", len(traced),
                       Path(first.filename).name, first.lineno, str(first.message).split(".")[0])
    return onnx.load_from_string(buffer.getvalue())


# ------------------------------------------------------------------------------------------- QDQ


def fake_quantize_name(node: onnx.NodeProto) -> str:
    """The torch module path of the FakeQuantize an ONNX node came from (best effort)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s for s in ast.literal_eval(prop.value)[:-1] if s]
            if scopes:
                return ".".join(scopes)
    parts = [p for p in node.name.split("/") if p][:-1]  # TorchScript: "/layer1/fq/FakeQuantize"
    if parts:
        return ".".join(parts)
    input_low = node.input[1]
    return input_low.rsplit(".", 1)[0] if "." in input_low else node.name


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # in topological order, so Identity chains resolve
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:  # TorchScript wraps shared ranges
            values[node.output[0]] = values[node.input[0]]
    return values


def _qdq_params(name, x, il, ih, ol, oh, levels) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(scale, zero_point, axis) of the QDQ pair that has exactly the FakeQuantize's grid."""
    def fail(why: str) -> ExportError:
        return ExportError(f"torchpqt.exporters.onnx: FakeQuantize '{name}' has no exact QDQ form: {why}; "
                           "export with format='fakequantize'")
    if not (np.array_equal(*np.broadcast_arrays(il, ol)) and np.array_equal(*np.broadcast_arrays(ih, oh))):
        raise fail("its output range differs from its input range (saturation fix or overflow correction)")
    il64, ih64 = il.astype(np.float64), ih.astype(np.float64)
    if levels == 256:
        scale = ((ih - il) / np.float32(255)).astype(np.float32)
        zero_point = -il64 / scale.astype(np.float64)
        if np.abs(zero_point - np.round(zero_point)).max() > _ZP_TOLERANCE:
            raise fail(f"zero point {zero_point.ravel()[:4]} is not an integer")
        zp = np.round(zero_point)
        if zp.min() < 0 or zp.max() > 255:
            raise fail("its range does not contain zero, so the zero point leaves [0, 255]")
        zp = zp.astype(np.uint8)
    elif levels == 255:
        if not np.array_equal(il64, -ih64):
            raise fail("255 levels are exact in int8 only for a symmetric range (input_low == -input_high)")
        if x is None or np.any(x < il) or np.any(x > ih):
            raise fail("with 255 levels QuantizeLinear could emit code -128, which the FakeQuantize never "
                       "does; only a constant weight inside its range is exact")
        scale = (ih / np.float32(127)).astype(np.float32)
        zp = np.zeros(scale.shape, np.int8)
    else:
        raise fail(f"levels={levels}; QDQ has 256-level (uint8) and 255-level symmetric (int8) grids only")
    axes = [i for i, d in enumerate(scale.shape) if d > 1]
    if len(axes) > 1:
        raise fail(f"its ranges vary along more than one axis {scale.shape}")
    if not axes:
        return scale.reshape(()), zp.reshape(()), None
    return scale.reshape(-1), zp.reshape(-1), axes[0]


def _to_qdq(proto: onnx.ModelProto) -> onnx.ModelProto:
    graph, consts = proto.graph, _constants(proto.graph)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info]}
    ranks.update({k: v.ndim for k, v in consts.items()})
    new_nodes, new_inits = [], []
    for node in graph.node:
        if node.op_type != "FakeQuantize" or node.domain != OV_DOMAIN:
            new_nodes.append(node)
            continue
        name = fake_quantize_name(node)
        missing = [i for i in node.input[1:] if i not in consts]
        if missing:
            raise ExportError(f"torchpqt.exporters.onnx: FakeQuantize '{name}' has non-constant ranges {missing}; "
                              "QDQ needs constant scales")
        levels = next(a.i for a in node.attribute if a.name == "levels")
        il, ih, ol, oh = (consts[i].astype(np.float32) for i in node.input[1:])
        scale, zp, axis = _qdq_params(name, consts.get(node.input[0]), il, ih, ol, oh, levels)
        if axis is not None:  # ranges broadcast right-aligned against x
            axis += ranks.get(node.input[0], il.ndim) - il.ndim
        prefix = f"{name}.qdq"
        new_inits += [numpy_helper.from_array(scale, prefix + "_scale"),
                      numpy_helper.from_array(zp, prefix + "_zero_point")]
        extra = {"axis": axis} if axis is not None else {}
        quantized = prefix + "_quantized"
        new_nodes.append(helper.make_node("QuantizeLinear", [node.input[0], prefix + "_scale", prefix + "_zero_point"],
                                          [quantized], name=prefix + "/QuantizeLinear", **extra))
        new_nodes.append(helper.make_node("DequantizeLinear", [quantized, prefix + "_scale", prefix + "_zero_point"],
                                          list(node.output), name=prefix + "/DequantizeLinear", **extra))
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    kept_opsets = [o for o in proto.opset_import if o.domain != OV_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept_opsets)
    return proto
