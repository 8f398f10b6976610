"""Export a fake-quantized torch model to OpenVINO IR (.xml/.bin) and check it on CPU.

Pipeline: torch → ONNX (FakeQuantize nodes, :mod:`torchpqt.exporters.onnx`, each named after its
torch module) → OpenVINO's ONNX frontend → the model-conversion transformations ``ovc`` applies →
with ``compress_weights``, ``CompressQuantizeWeights`` (weight FakeQuantize → ``Const(i8) → Convert →
[Subtract] → Multiply``, as POT's ``compress_model_weights``, spec §4.8) → ``ov.save_model`` with f32
weights.

The check (see :class:`~torchpqt.exporters._report.ExportReport`) judges whether the saved IR computes
the torch model's function, layer by layer: the IR runs with FakeQuantize simulated in f32, and torch
runs fed, at every FakeQuantize, the IR's levels, so each FakeQuantize's input is compared on the same
upstream values (only accumulation order differs; a rounding tie may flip one level) instead of
end to end, where one flipped tie propagates through every later layer. The int8 run (how OpenVINO
deploys the IR) is reported: its SQNR against torch, argmax agreement, which weighted ops run u8/i8.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import openvino as ov
import torch
from openvino._offline_transformations import (
    apply_moc_transformations,
    compress_quantize_weights_transformation,
)

from torchpqt.errors import ExportError
from torchpqt.manifest import MANIFEST_NAME, write_manifest
from torchpqt.quant.fake_quantize import FakeQuantize, _levels
from torchpqt.quant.trainable import frozen_copy

from . import _lint, _probe
from . import onnx as onnx_export  # relative: the folder exporters/ installs as torchpqt.exporters
from ._compare import FQStats, Tolerances, max_relative_difference, sqnr_db
from ._report import ExportReport

__all__ = ["WEIGHTED_LAYER_TYPES", "ExportReport", "FQStats", "Int8Lint", "Tolerances", "check", "export", "lint"]

Int8Lint = _lint.Int8Lint

logger = logging.getLogger("torchpqt")

# CPU runtime layer types of the ops POT quantizes with weights (GroupConvolution runs as Convolution).
WEIGHTED_LAYER_TYPES = ("Convolution", "Deconvolution", "MatMul", "FullyConnected")
_INT8 = ("u8", "i8")
_F32 = {"INFERENCE_PRECISION_HINT": "f32"}
_TAG = "torchpqt_fake_quantize"


def export(qmodel: torch.nn.Module, example_inputs: Any, path: str | Path, *, target_device: str | None = None,
           compress_weights: bool = True, check: bool = True, dynamic_batch: bool = True,
           tolerances: Tolerances | None = None) -> ExportReport:
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
        check: run ``example_inputs`` through the IR and torch and compare them layer by layer
            (see :func:`check`).
        dynamic_batch: dynamic dim 0 on every input, unless False (or the model is fixed).
        tolerances: what the check allows (default :class:`Tolerances`).

    Writes ``manifest.json`` beside the IR (:mod:`torchpqt.manifest`): the run's config, versions, calibration
    samples, statistics and model hashes, for ``torchpqt reproduce``.

    Returns:
        An :class:`ExportReport` (numbers are None when ``check`` is False; ``manifest``: the manifest's path).

    Raises:
        ExportError: the path is not ``.xml``, the export fails, or the IR does not compute the torch
            model's function (the files are written for inspection).
    """
    qmodel = frozen_copy(qmodel)  # trainable ranges: a frozen copy is exported and checked
    target_device = _target_device(qmodel, target_device)
    xml = Path(path)
    if xml.suffix != ".xml":
        raise ExportError(f"torchpqt.exporters.openvino: path must end with .xml, got {str(path)!r}")
    xml.parent.mkdir(parents=True, exist_ok=True)
    model, fq_nodes = _convert(qmodel, example_inputs, dynamic_batch)
    _FQ_TABLES[qmodel] = (_fingerprint(qmodel), fq_nodes)
    if compress_weights:
        compress_quantize_weights_transformation(model)
    model.set_friendly_name(type(qmodel).__name__)
    _set_rt_info(model, qmodel, target_device, compress_weights)
    ov.save_model(model, str(xml), compress_to_fp16=False)  # keep f32: ranges and scales stay exact
    manifest = write_manifest(qmodel, xml.parent / MANIFEST_NAME, ir=xml.name)
    logger.info("wrote OpenVINO IR %s and its run manifest %s", xml, manifest.name)
    if not check:
        report = ExportReport(path=xml, fq_levels=_fq_levels(ov.Core().read_model(str(xml))))
    else:
        report = _check(xml, qmodel, example_inputs, target_device, fq_nodes, tolerances or Tolerances())
    report.manifest = manifest
    return report


def check(path: str | Path, qmodel: torch.nn.Module, example_inputs: Any, *, target_device: str | None = None,
          tolerances: Tolerances | None = None) -> ExportReport:
    """Checks an IR written by :func:`export` against ``qmodel`` on ``example_inputs``.

    Layer by layer, on the IR with FakeQuantize simulated in f32 and torch fed the IR's levels at every
    FakeQuantize: every activation FakeQuantize of torch is in the IR; its input position differs by at
    most ``max_input_deviation`` steps beyond float rounding, no level by more than ``max_level_difference``
    and at most ``max_flip_fraction`` of its levels away from a rounding tie; the outputs are within
    ``output_rtol`` of their range. The end-to-end SQNR of that run and of the int8 run are reported, not
    judged. GNA targets are checked structurally (no GNA plugin exists).

    Raises:
        ExportError: naming each FakeQuantize (torch module path) that disagrees and how.
    """
    qmodel = frozen_copy(qmodel)  # trainable ranges: checked as export() wrote them
    target_device = _target_device(qmodel, target_device)
    fq_nodes = _FQ_TABLES.get(qmodel, (None, None))
    if fq_nodes[0] != _fingerprint(qmodel):
        proto = onnx_export.export_proto(qmodel, example_inputs, dynamic_batch=False)
        fq_nodes = (_fingerprint(qmodel), _probe.name_fake_quantize_nodes(proto))
    return _check(Path(path), qmodel, example_inputs, target_device, fq_nodes[1], tolerances or Tolerances())


def lint(path: str | Path) -> _lint.Int8Lint:
    """The int8 lint of an IR file (what ``export(...).lint`` holds, for an IR exported with ``check=False``):
    which activation FakeQuantize the CPU plugin runs in int8, the int8 share, whether this CPU saturates."""
    saved = ov.Core().read_model(str(path))
    compiled = ov.Core().compile_model(saved, "CPU", _F32)
    return _lint.lint_compiled(saved, compiled, _weighted_op_precisions(compiled))


# export() remembers each model's FakeQuantize node table, so check() on the IR it just wrote needs no second
# ONNX export (torch.export dominates the check's time); any change to a FakeQuantize invalidates the entry
_FQ_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(qmodel: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for name, m in qmodel.named_modules():
        if isinstance(m, FakeQuantize):
            digest.update(f"{name}:{m.levels}".encode())
            for t in (m.input_low, m.input_high, m.output_low, m.output_high):
                digest.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _target_device(qmodel: torch.nn.Module, target_device: str | None) -> str:
    if target_device is not None:
        return target_device
    config = getattr(qmodel, "torchpqt_config", None) or {}
    params = config.get("params", config) if isinstance(config, dict) else {}
    return params.get("target_device") or "CPU"


def _convert(qmodel: torch.nn.Module, example_inputs: Any, dynamic_batch: bool
             ) -> tuple[ov.Model, list[_probe.FQNode]]:
    """torch → ONNX (FakeQuantize nodes named after their modules) → ov.Model after ovc's transformations."""
    proto = onnx_export.export_proto(qmodel, example_inputs, dynamic_batch=dynamic_batch)
    fq_nodes = _probe.name_fake_quantize_nodes(proto)
    with tempfile.TemporaryDirectory(prefix="torchpqt_") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        large = proto.ByteSize() > onnx_export._MAX_PROTO_BYTES
        onnx.save_model(proto, str(onnx_path), save_as_external_data=large,
                        location=onnx_path.name + ".data" if large else None)
        del proto
        try:
            model = ov.Core().read_model(str(onnx_path))
        except RuntimeError as exc:  # an op the ONNX frontend has no translation for
            lines = _openvino_reason(exc)
            raise ExportError(
                "torchpqt.exporters.openvino: OpenVINO cannot convert the exported ONNX graph: "
                f"{' '.join(lines[-2:]) if lines else type(exc).__name__}\n  fix: the op named there has no OpenVINO "
                "equivalent; replace it in the model, or quantize and export the submodule without it") from exc
    for op in _fake_quantize_ops(model):  # rt_info follows a node through the fusions that rename it
        op.get_rt_info()[_TAG] = op.get_friendly_name()
    apply_moc_transformations(model, cf=False, smart_reshape=True)  # what ovc applies
    for op in _fake_quantize_ops(model):
        info = op.get_rt_info()
        if _TAG in info:
            op.set_friendly_name(info[_TAG].astype(str))
            del info[_TAG]
    _snap_weights(model)
    return model, fq_nodes


def _fake_quantize_ops(model: ov.Model) -> list:
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]


def _snap_weights(model: ov.Model) -> None:
    """Moves every constant FakeQuantize input (a weight) to the centre of the level torch's FakeQuantize
    gives it.

    A weight can sit exactly on a rounding tie: POT's saturation fix halves the first convolution's weights
    into a range whose edge is the largest weight, so that weight's position is k + 0.5 in every channel.
    torch's FakeQuantize rounds such a tie as the CPU plugin's runtime FakeQuantize does, but OpenVINO folds
    weight FakeQuantize (``CompressQuantizeWeights``, or compile-time constant folding) with its reference
    formula, which takes the other level on about a third of those channels. At the level centre both
    formulas agree, and the FakeQuantize's output is unchanged.
    """
    for op in _fake_quantize_ops(model):
        values = [_constant_value(op.input_value(i)) for i in range(5)]
        if any(v is None for v in values) or values[0].dtype != np.float32:
            continue
        x, il, ih = (torch.from_numpy(np.array(v)) for v in values[:3])  # writable copies
        levels = int(op.get_attributes()["levels"])
        q = _levels(x, il, ih, levels).double()
        centre = il.double() + q * ((ih.double() - il.double()) / (levels - 1))
        keep = (ih == il) | ~torch.isfinite(centre)  # an empty range (an all-zero channel) has no levels
        centre = torch.where(keep, x.double(), centre)
        op.input(0).replace_source_output(ov.opset13.constant(centre.float().numpy()).output(0))


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


def _check(xml: Path, qmodel: torch.nn.Module, example_inputs: Any, target_device: str,
           fq_nodes: list[_probe.FQNode], tolerances: Tolerances) -> ExportReport:
    saved = ov.Core().read_model(str(xml))  # what is checked is what was written
    report = ExportReport(path=xml, fq_levels=_fq_levels(saved), tolerances=tolerances)
    core = ov.Core()
    device = target_device if target_device in core.available_devices else "CPU"
    if device != target_device:
        logger.warning("device %s not available; checking the IR on CPU", target_device)
    report.device = device
    args, kwargs = onnx_export._normalize_inputs(example_inputs)
    feed = _feed(saved, args, kwargs)
    compiled = compile_or_explain(core, saved, device, _F32, xml)
    int8_outputs = _run(compiled, feed)
    report.op_precisions = _weighted_op_precisions(compiled)
    if report.op_precisions:
        report.int8_share = sum(p in _INT8 for _, _, p in report.op_precisions) / len(report.op_precisions)
    if device == "CPU" and not target_device.startswith("GNA"):
        report.lint = _lint.lint_compiled(saved, compiled, report.op_precisions)
    if target_device.startswith("GNA") and device != target_device:
        _check_gna(report, qmodel, args, kwargs, int8_outputs)
    else:
        _check_layers(report, saved, qmodel, args, kwargs, feed, fq_nodes, int8_outputs)
    logger.info("%s", report)
    _warn_int8_far_off(report)
    return report


# A good IR's int8 run agrees with torch at 23-45 dB (rounding ties flipped by the kernels' accumulation order,
# measured on POT's own IRs too); below 12 dB while the simulated IR matches torch, the kernels compute
# something else (seen: grouped Conv1d, Conv -> ReLU6 -> per-channel FakeQuantize -> depthwise conv).
_INT8_FAR_DB, _SIM_GOOD_DB = 12.0, 30.0


def _warn_int8_far_off(report: ExportReport) -> None:
    sim, int8 = report.sim_sqnr_db, report.int8_sqnr_db
    if sim is None or int8 is None or not report.simulated or sim < _SIM_GOOD_DB or int8 >= _INT8_FAR_DB:
        return
    logger.warning("the IR computes the torch model (simulated SQNR %.1f dB) but OpenVINO's int8 kernels on this "
                   "CPU give %.1f dB against it: an int8 kernel issue, not the quantization (known cases: grouped Conv1d, "
                   "Conv -> ReLU6 -> depthwise conv; README, Architectures); keep the layer float with ignored.scope "
                   "or ignored.operations", sim, int8)


def _openvino_reason(exc: RuntimeError) -> list[str]:
    """The lines of an OpenVINO error that say what went wrong (without its "Exception from <file>" frames)."""
    return [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Exception from")]


def compile_or_explain(core: ov.Core, model: ov.Model, device: str, config: dict, xml: Path | None = None,
                       simulated: bool = False) -> ov.CompiledModel:
    """``core.compile_model``; an IR the plugin refuses raises ExportError with the plugin's own reason (the
    node it names is the torch module path of a FakeQuantize, or the ONNX node of an op). ``simulated``: the
    check's run with every FakeQuantize an output of its own (no fusion into its consumer)."""
    try:
        return core.compile_model(model, device, config)
    except RuntimeError as exc:
        lines = _openvino_reason(exc)
        reason = lines[-1] if lines else type(exc).__name__
        where = f" (written to {xml} for inspection)" if xml is not None else ""
        what = ("cannot compile the IR with each FakeQuantize as a layer of its own (the check's simulated run)"
                if simulated else "cannot compile the exported IR")
        also = (" (the deployed int8 IR may still compile: export(..., check=False) skips the check)"
                if simulated else "")
        raise ExportError(
            f"torchpqt.exporters.openvino: OpenVINO's {device} plugin {what}{where}: {reason}\n"
            "  fix: leave the op it names (or the consumer of the FakeQuantize it names) unquantized with "
            f"ignored.scope{also}") from exc


def _check_layers(report: ExportReport, saved: ov.Model, qmodel: torch.nn.Module, args: tuple, kwargs: dict,
                  feed: Any, fq_nodes: list[_probe.FQNode], int8_outputs: list[np.ndarray]) -> None:
    probe = _probe.run_probe(saved, fq_nodes, feed, report.device)
    fed = _probe.run_torch_fed(qmodel, args, kwargs, fq_nodes, probe, report.tolerances)
    reference = _run_torch(qmodel, args, kwargs)
    _same_count(probe.outputs, reference)
    report.simulated = probe.simulated
    if not probe.simulated:
        logger.warning("this OpenVINO refuses LP_TRANSFORMS_MODE: the IR is checked with its int8 kernels")
    report.fake_quantize = fed.stats
    report.output_deviation = max((max_relative_difference(o, t) for o, t in zip(probe.outputs, fed.outputs)),
                                   default=0.0)
    report.sim_sqnr_db = min((sqnr_db(o, t) for o, t in zip(probe.outputs, reference)), default=None)
    report.max_abs_diff = max((_max_abs(o, t) for o, t in zip(probe.outputs, reference)), default=0.0)
    report.step = _output_step(saved)
    report.max_diff_steps = report.max_abs_diff / report.step if report.step else None
    report.int8_sqnr_db = min((sqnr_db(o, t) for o, t in zip(int8_outputs, reference)), default=None)
    report.int8_max_abs_diff = max((_max_abs(o, t) for o, t in zip(int8_outputs, reference)), default=0.0)
    report.top1_agreement = _top1(int8_outputs, reference)
    if fed.not_compared:
        logger.info("FakeQuantize the converter moved, not compared: %s", ", ".join(fed.not_compared))
    if probe.extra:
        logger.info("IR FakeQuantize with no torch counterpart, judged through their consumers: %s",
                    ", ".join(probe.extra))
    problems = fed.missing + report.failures()
    if problems:
        shown = "\n  ".join(problems[:8]) + (f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ExportError(f"torchpqt.exporters.openvino: the IR does not compute the torch model's function:\n  "
                          f"{shown}\n{report}\nthe files were written for inspection; a real export bug is likely "
                          "(please report it), or pass check=False to skip the check")


def _check_gna(report: ExportReport, qmodel: torch.nn.Module, args: tuple, kwargs: dict,
               outputs: list[np.ndarray]) -> None:
    # No GNA plugin exists any more. The CPU plugin drops activation FakeQuantize above 256 levels (GNA's
    # 16/32-bit activations and outputs) and may run its own int8 kernels behind them, so a CPU run
    # cannot verify a GNA IR numerically: the check is structural (every torch FakeQuantize is in the
    # IR with its levels) and the CPU difference is reported, with a warning above 1 % of the range.
    _check_gna_structure(report, qmodel)
    reference = _run_torch(qmodel, args, kwargs, max_levels=256)
    _same_count(outputs, reference)
    report.note = ("GNA IR: FakeQuantize levels checked against the torch model; run on CPU, which ignores "
                   "FakeQuantize above 256 levels, against the torch model bypassing those too")
    report.int8_max_abs_diff = max((_max_abs(o, t) for o, t in zip(outputs, reference)), default=0.0)
    report.int8_sqnr_db = min((sqnr_db(o, t) for o, t in zip(outputs, reference)), default=None)
    scale = max((float(np.abs(t).max(initial=0.0)) for t in reference), default=0.0)
    if report.int8_max_abs_diff > 1e-2 * scale + 1e-5:
        logger.warning("GNA IR on CPU differs from the torch model by %.3g (%.2g %% of the output range): "
                       "expected, the CPU plugin does not emulate GNA's 16/32-bit arithmetic",
                       report.int8_max_abs_diff, 100 * report.int8_max_abs_diff / max(scale, 1e-12))


def _same_count(ov_outputs: list, torch_outputs: list) -> None:
    if len(ov_outputs) != len(torch_outputs):
        raise ExportError(f"torchpqt.exporters.openvino: the IR has {len(ov_outputs)} outputs but the torch model "
                          f"returned {len(torch_outputs)} tensors")


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0))


def _top1(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float | None:
    """Argmax agreement over the rows of the 2-D outputs with more than one column (classifier logits)."""
    pairs = [(o, t) for o, t in zip(outputs, reference) if t.ndim == 2 and t.shape[1] > 1 and o.shape == t.shape]
    if not pairs:
        return None
    agree = sum(int((o.argmax(1) == t.argmax(1)).sum()) for o, t in pairs)
    return agree / sum(t.shape[0] for _, t in pairs)


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


def _feed(model: ov.Model, args: tuple, kwargs: dict) -> Any:
    if kwargs:
        names = [i.get_any_name() for i in model.inputs]
        return {n: kwargs[n].detach().cpu().numpy() for n in names if n in kwargs}
    return [a.detach().cpu().numpy() for a in args if isinstance(a, torch.Tensor)]


def _run(compiled: ov.CompiledModel, feed: Any) -> list[np.ndarray]:
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
