"""Export a fake-quantized torch model to OpenVINO IR (.xml/.bin) and check it on CPU.

Pipeline: torch → ONNX (FakeQuantize nodes, :mod:`torchpqt.exporters.onnx`) → OpenVINO's ONNX
frontend → the model-conversion transformations ``ovc`` applies → with ``compress_weights``,
``CompressQuantizeWeights`` (weight FakeQuantize → ``Const(i8) → Convert → [Subtract] → Multiply``,
as POT's ``compress_model_weights``, spec §4.8) → ``ov.save_model`` with f32 weights.

The check compiles the IR on CPU with ``INFERENCE_PRECISION_HINT=f32`` (on CPUs with bf16 the
plugin's default would run the non-quantized ops in bf16), runs ``example_inputs`` and compares
with the torch fake-quant model, in absolute terms and in steps of the FakeQuantize nearest the
outputs; it also reports which Convolution/MatMul/FullyConnected ops execute in int8.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
from openvino._offline_transformations import (
    apply_moc_transformations,
    compress_quantize_weights_transformation,
)

from torchpqt.errors import ExportError
from torchpqt.quant.fake_quantize import FakeQuantize
from torchpqt.quant.trainable import frozen_copy

from . import onnx as onnx_export  # relative: the folder exporters/ installs as torchpqt.exporters

__all__ = ["WEIGHTED_LAYER_TYPES", "ExportReport", "export"]

logger = logging.getLogger("torchpqt")

# CPU runtime layer types of the ops POT quantizes with weights (GroupConvolution runs as Convolution).
WEIGHTED_LAYER_TYPES = ("Convolution", "Deconvolution", "MatMul", "FullyConnected")
_INT8 = ("u8", "i8")


@dataclass
class ExportReport:
    """What :func:`export` wrote and measured.

    Attributes:
        path: the IR ``.xml`` (the ``.bin`` sits next to it).
        max_abs_diff: max |OpenVINO - torch| over all outputs (None when not checked).
        max_diff_steps: ``max_abs_diff`` divided by ``step`` (None without a check or an FQ).
        step: quantization step of the activation FakeQuantize nearest the outputs.
        int8_share: share of Convolution/Deconvolution/MatMul/FullyConnected ops whose CPU
            runtime precision is u8/i8 (None when not checked or there is none).
        op_precisions: ``(op name, layer type, runtime precision)`` of those ops.
        device: the device the check ran on.
        fq_levels: ``{levels: count}`` of the FakeQuantize nodes in the saved IR (weights stored as
            int8 constants are no longer FakeQuantize nodes).
        note: how the check was judged, when not by quantization steps (GNA targets).
    """

    path: Path
    max_abs_diff: float | None = None
    max_diff_steps: float | None = None
    step: float | None = None
    int8_share: float | None = None
    op_precisions: list[tuple[str, str, str]] = field(default_factory=list)
    device: str | None = None
    fq_levels: dict[int, int] = field(default_factory=dict)
    note: str | None = None

    def __str__(self) -> str:
        lines = [f"OpenVINO IR: {self.path}"]
        if self.fq_levels:
            lines.append("  FakeQuantize levels: " + ", ".join(f"{k}×{v}" for k, v in sorted(self.fq_levels.items())))
        if self.max_abs_diff is None:
            return lines[0] + " (not checked)"
        steps = "n/a" if self.max_diff_steps is None else f"{self.max_diff_steps:.3g} steps of {self.step:.4g}"
        lines.append(f"  max |OpenVINO - torch| = {self.max_abs_diff:.4g} ({steps}) on {self.device}")
        if self.note:
            lines.append(f"  note: {self.note}")
        if self.int8_share is not None:
            n_int8 = sum(p in _INT8 for _, _, p in self.op_precisions)
            lines.append(f"  int8 weighted ops: {n_int8}/{len(self.op_precisions)} ({self.int8_share:.0%})")
            lines += [f"    {kind:<14} {prec:<5} {name}" for name, kind, prec in self.op_precisions]
        return "\n".join(lines)


def export(qmodel: torch.nn.Module, example_inputs: Any, path: str | Path, *, target_device: str | None = None,
           compress_weights: bool = True, check: bool = True, dynamic_batch: bool = True,
           tolerance_steps: float = 2.0) -> ExportReport:
    """Exports ``qmodel`` to an OpenVINO IR with FakeQuantize nodes and checks it.

    Args:
        qmodel: torch module or GraphModule with ``torchpqt.FakeQuantize`` quantization points.
            Its attribute ``torchpqt_config`` (a JSON-able dict), if any, goes into the IR's
            rt_info ``quantization_parameters/config`` next to the torchpqt version, as POT did.
        example_inputs: a tensor, a tuple/list of positional inputs or a dict of keyword inputs.
        path: the ``.xml`` file to write; the ``.bin`` goes next to it.
        target_device: the target the model was quantized for (default: the ``target_device`` of
            ``qmodel.torchpqt_config``, else CPU); the check runs there, falling back to CPU; recorded.
        compress_weights: store weight FakeQuantize as int8 constants + dequantization (POT's
            default); False keeps FakeQuantize on f32 weights.
        check: compile, run ``example_inputs`` and compare with torch.
        dynamic_batch: dynamic dim 0 on every input, unless False (or the model is fixed).
        tolerance_steps: the check fails above this many steps of the last FakeQuantize.

    Returns:
        An :class:`ExportReport` (numbers are None when ``check`` is False).

    Raises:
        ExportError: the path is not ``.xml``, the export fails, or the check exceeds the tolerance.
    """
    qmodel = frozen_copy(qmodel)  # trainable ranges: a frozen copy is exported and checked
    if target_device is None:
        config = getattr(qmodel, "torchpqt_config", None) or {}
        params = config.get("params", config) if isinstance(config, dict) else {}
        target_device = params.get("target_device") or "CPU"
    xml = Path(path)
    if xml.suffix != ".xml":
        raise ExportError(f"torchpqt.exporters.openvino: path must end with .xml, got {str(path)!r}")
    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="torchpqt_") as tmp:
        onnx_path = onnx_export.export(qmodel, example_inputs, Path(tmp) / "model.onnx",
                                       dynamic_batch=dynamic_batch)
        model = ov.Core().read_model(str(onnx_path))
        apply_moc_transformations(model, cf=False, smart_reshape=True)  # what ovc applies
        if compress_weights:
            compress_quantize_weights_transformation(model)
        model.set_friendly_name(type(qmodel).__name__)
        _set_rt_info(model, qmodel, target_device, compress_weights)
        ov.save_model(model, str(xml), compress_to_fp16=False)  # keep f32: ranges and scales stay exact
    logger.info("wrote OpenVINO IR %s", xml)
    saved = ov.Core().read_model(str(xml))  # what is checked is what was written
    report = ExportReport(path=xml, fq_levels=_fq_levels(saved))
    if check:
        _check(report, saved, qmodel, example_inputs, target_device, tolerance_steps)
        logger.info("%s", report)
    return report


def _version() -> str:
    try:
        return metadata.version("torchpqt")
    except metadata.PackageNotFoundError:
        return "unknown"


def _set_rt_info(model: ov.Model, qmodel: torch.nn.Module, target_device: str, compress_weights: bool) -> None:
    model.set_rt_info(f"torchpqt {_version()}", ["quantization_parameters", "version"])
    model.set_rt_info(target_device, ["quantization_parameters", "target_device"])
    model.set_rt_info(str(compress_weights), ["quantization_parameters", "compress_weights"])
    config = getattr(qmodel, "torchpqt_config", None)
    if config is not None:
        try:
            text = json.dumps(config, sort_keys=True)
        except TypeError:
            logger.warning("qmodel.torchpqt_config is not JSON-able; storing its str()")
            text = str(config)
        model.set_rt_info(text, ["quantization_parameters", "config"])


def _check(report: ExportReport, saved: ov.Model, qmodel: torch.nn.Module, example_inputs: Any,
           target_device: str, tolerance_steps: float) -> None:
    core = ov.Core()
    device = target_device if target_device in core.available_devices else "CPU"
    if device != target_device:
        logger.warning("device %s not available; checking the IR on CPU", target_device)
    compiled = core.compile_model(saved, device, {"INFERENCE_PRECISION_HINT": "f32"})
    args, kwargs = onnx_export._normalize_inputs(example_inputs)
    ov_outputs = _run_openvino(compiled, args, kwargs)
    gna = target_device.startswith("GNA") and device != target_device
    torch_outputs = _run_torch(qmodel, args, kwargs, max_levels=256 if gna else None)
    if len(ov_outputs) != len(torch_outputs):
        raise ExportError(f"torchpqt.exporters.openvino: the IR has {len(ov_outputs)} outputs but the torch model "
                          f"returned {len(torch_outputs)} tensors")
    diffs = [float(np.abs(o.astype(np.float64) - t.astype(np.float64)).max(initial=0.0))
             for o, t in zip(ov_outputs, torch_outputs)]
    report.device = device
    report.max_abs_diff = max(diffs, default=0.0)
    report.step = _output_step(saved)
    report.max_diff_steps = None if not report.step else report.max_abs_diff / report.step
    report.op_precisions = _weighted_op_precisions(compiled)
    if report.op_precisions:
        report.int8_share = sum(p in _INT8 for _, _, p in report.op_precisions) / len(report.op_precisions)
    scale = max((float(np.abs(t).max(initial=0.0)) for t in torch_outputs), default=0.0)
    if gna:
        # No GNA plugin exists any more. The CPU plugin drops activation FakeQuantize above 256 levels (GNA's
        # 16/32-bit activations and outputs) and may run its own int8 kernels behind them, so a CPU run
        # cannot verify a GNA IR numerically: the check is structural (every torch FakeQuantize is in the
        # IR with its levels) and the CPU difference is reported, with a warning above 1 % of the range.
        _check_gna_structure(report, qmodel)
        too_far = False
        report.note = ("GNA IR: FakeQuantize levels checked against the torch model; run on CPU, which ignores "
                       "FakeQuantize above 256 levels, against the torch model bypassing those too")
        if report.max_abs_diff > 1e-2 * scale + 1e-5:
            logger.warning("GNA IR on CPU differs from the torch model by %.3g (%.2g %% of the output range): "
                           "expected, the CPU plugin does not emulate GNA's 16/32-bit arithmetic",
                           report.max_abs_diff, 100 * report.max_abs_diff / max(scale, 1e-12))
    elif report.max_diff_steps is not None:
        too_far = report.max_diff_steps > tolerance_steps
    else:  # no FakeQuantize before the outputs: compare as float models
        too_far = report.max_abs_diff > 1e-4 * scale + 1e-5
    if too_far:
        raise ExportError(f"torchpqt.exporters.openvino: the IR disagrees with the torch model: {report} "
                          f"(tolerance {tolerance_steps} steps); the files were written for inspection")


def _check_gna_structure(report: ExportReport, qmodel: torch.nn.Module) -> None:
    """Every FakeQuantize of the torch model is in the IR with its levels (weights of 256 levels or fewer
    may have become int8 constants)."""
    want: dict[int, int] = {}
    for m in qmodel.modules():
        if isinstance(m, FakeQuantize):
            want[int(m.levels)] = want.get(int(m.levels), 0) + 1
    for levels, count in want.items():
        have = report.fq_levels.get(levels, 0)
        if have != count and not (levels <= 256 and have < count):
            raise ExportError(f"torchpqt.exporters.openvino: the GNA IR has {have} FakeQuantize with {levels} levels, "
                              f"the torch model {count}; the files were written for inspection")


def _fq_levels(model: ov.Model) -> dict[int, int]:
    levels: dict[int, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            n = int(op.get_attributes()["levels"])
            levels[n] = levels.get(n, 0) + 1
    return levels


def _run_openvino(compiled: ov.CompiledModel, args: tuple, kwargs: dict) -> list[np.ndarray]:
    if kwargs:
        names = [i.get_any_name() for i in compiled.inputs]
        feed: Any = {n: kwargs[n].detach().cpu().numpy() for n in names if n in kwargs}
    else:
        feed = [a.detach().cpu().numpy() for a in args if isinstance(a, torch.Tensor)]
    result = compiled(feed)
    return [np.asarray(result[o]) for o in compiled.outputs]


def _run_torch(qmodel: torch.nn.Module, args: tuple, kwargs: dict, max_levels: int | None = None
               ) -> list[np.ndarray]:
    """The torch outputs; with ``max_levels``, FakeQuantize with more levels pass their input through, as
    the CPU plugin does with a GNA IR's 16/32-bit FakeQuantize."""
    bypass = (lambda module, inputs, output: inputs[0])
    plan = getattr(qmodel, "torchpqt_plan", None)
    # weight FakeQuantize are constant-folded by OpenVINO (exactly), so only activation ones are dropped
    weights = {p.module_name for p in plan.points if p.group == "weights"} if plan is not None else set()
    hooks = [m.register_forward_hook(bypass) for name, m in qmodel.named_modules()
             if max_levels is not None and isinstance(m, FakeQuantize) and m.levels > max_levels
             and name not in weights]
    try:
        with onnx_export.eval_mode(qmodel), torch.no_grad():
            out = qmodel(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    leaves = torch.utils._pytree.tree_leaves(out)
    return [t.detach().cpu().float().numpy() for t in leaves if isinstance(t, torch.Tensor)]


def _constant_value(output: ov.Output) -> np.ndarray | None:
    node = output.get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def _output_step(model: ov.Model) -> float | None:
    """Largest quantization step among the activation FakeQuantize nodes nearest the outputs."""
    steps, seen = [], set()
    stack = [r.input_value(0) for r in model.get_results()]
    while stack:
        value = stack.pop()
        node = value.get_node()
        if node.get_name() in seen:
            continue
        seen.add(node.get_name())
        ranges = [_constant_value(node.input_value(i)) for i in range(1, 5)] \
            if node.get_type_name() == "FakeQuantize" else []
        if ranges and _constant_value(node.input_value(0)) is None and all(r is not None for r in ranges):
            ol, oh = ranges[2].astype(np.float64), ranges[3].astype(np.float64)
            steps.append(float(np.abs(oh - ol).max()) / (node.get_attributes()["levels"] - 1))
            continue  # only the nearest FakeQuantize on each path
        stack += [node.input_value(i) for i in range(node.get_input_size())]
    return max(steps) if steps else None


def _weighted_op_precisions(compiled: ov.CompiledModel) -> list[tuple[str, str, str]]:
    rows = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if kind in WEIGHTED_LAYER_TYPES:
            precision = info["runtimePrecision"].astype(str).lower() if "runtimePrecision" in info else "?"
            rows.append((op.get_friendly_name(), kind, precision))
    return rows
