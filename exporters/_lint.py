"""The int8 lint: will the exported IR run faster in int8 on this CPU?

OpenVINO's CPU plugin turns an activation FakeQuantize into int8 only where a kernel behind it takes u8/i8:
the FakeQuantize becomes a quantize step (its own layer, or fused into the producer's kernel) whose output
precision is u8/i8. Where no int8 kernel follows (a FakeQuantize before an op without one, e.g. a
transcendental function), the plugin keeps it as f32 fake quantization (often fused into the producer as a
post-op with an f32 output): the FakeQuantize then only costs time and accuracy. The compiled model's runtime
graph says which: every runtime layer lists the IR ops it executes (``originalLayersNames``) and its output
precisions (``outputPrecisions``), so each IR FakeQuantize is found in its runtime layer and judged by that
layer's output precision.

With the int8 share of the weighted ops (their ``runtimePrecision``) and whether this CPU's int8 dot product
saturates (no VNNI/AMX: :mod:`torchpqt.hardware.cpu_isa`), that answers "will it be faster?".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import openvino as ov

from torchpqt.hardware.cpu_isa import cpu_flags, cpu_isa_name, int8_saturates

__all__ = ["FakeQuantizeFusion", "Int8Lint", "cpu_isa_name", "lint_compiled"]

_INT8 = ("u8", "i8")


@dataclass(frozen=True)
class FakeQuantizeFusion:
    """Where the CPU plugin put one activation FakeQuantize of the IR."""

    name: str         # the IR node's friendly name: the torch FakeQuantize module's path
    layer: str        # the runtime layer executing it
    layer_type: str   # that layer's type (FakeQuantize: standalone; Convolution, Eltwise...: fused into it)
    precision: str    # that layer's output precision(s)

    @property
    def int8(self) -> bool:
        return any(p in _INT8 for p in self.precision.split(","))


@dataclass
class Int8Lint:
    """The lint of one compiled IR (see the module docstring).

    Attributes:
        fake_quantize: where each activation FakeQuantize of the IR runs.
        int8_share: share of the weighted ops (Convolution, MatMul, ...) that run u8/i8.
        f32_weighted_ops: the weighted ops that do not.
        saturates: True when this CPU's int8 dot product saturates (x86 without VNNI/AMX), None unknown.
        isa: this CPU's int8 instruction set, in words.
    """

    fake_quantize: list[FakeQuantizeFusion] = field(default_factory=list)
    int8_share: float | None = None
    f32_weighted_ops: list[str] = field(default_factory=list)
    saturates: bool | None = None
    isa: str = "unknown"

    @property
    def unfused(self) -> list[FakeQuantizeFusion]:
        """The FakeQuantize the plugin keeps as f32 fake quantization (no int8 kernel behind them)."""
        return [f for f in self.fake_quantize if not f.int8]

    @property
    def faster(self) -> bool | None:
        """The short answer: some weighted op runs int8 and the int8 kernels do not saturate."""
        if self.int8_share is None:
            return None
        return self.int8_share > 0 and self.saturates is not True

    def __str__(self) -> str:
        n = len(self.fake_quantize)
        lines = [f"int8 lint ({self.isa}): {n - len(self.unfused)}/{n} activation FakeQuantize feed int8 kernels"
                 + ("" if self.int8_share is None else f", int8 weighted ops {self.int8_share:.0%}")]
        for f in self.unfused:
            lines.append(f"    not int8: {f.name} (runs as f32 fake quantization in {f.layer_type} '{f.layer}', "
                         f"output {f.precision}): no int8 kernel behind it, it costs time and accuracy only; "
                         "put the op it feeds into ignored.scope")
        for op in self.f32_weighted_ops:
            lines.append(f"    f32 weighted op: {op}")
        if self.saturates:
            lines.append("    this CPU has no VNNI/AMX: its u8 x s8 int8 kernels saturate in int16 (consider "
                         "saturation_fix: \"all\"); int8 speed-up is modest")
        verdict = {True: "faster in int8 on this CPU: yes", False: "faster in int8 on this CPU: unlikely",
                   None: "faster in int8 on this CPU: unknown"}[self.faster]
        lines.append("    " + verdict)
        return "\n".join(lines)


def _activation_fake_quantize(model: ov.Model) -> list[str]:
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            names.append(op.get_friendly_name())
    return names


def lint_compiled(saved: ov.Model, compiled: ov.CompiledModel, op_precisions: list[tuple[str, str, str]],
                  flags: Iterable[str] | None = None) -> Int8Lint:
    """The lint of ``compiled`` (``saved`` compiled for CPU with its int8 kernels allowed).

    Args:
        op_precisions: ``(name, layer type, runtime precision)`` of the weighted ops (the export report's).
        flags: the CPU's flags (default: this machine's, from /proc/cpuinfo).
    """
    flags = cpu_flags() if flags is None else flags
    where: dict[str, tuple[str, str, str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["outputPrecisions"].astype(str).lower() if "outputPrecisions" in info else "?"
        names = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
        for name in filter(None, names.split(",")):
            where.setdefault(name, (op.get_friendly_name(), kind, precision))
    fused = [FakeQuantizeFusion(name, *where[name]) for name in _activation_fake_quantize(saved) if name in where]
    share = (sum(p in _INT8 for _, _, p in op_precisions) / len(op_precisions)) if op_precisions else None
    return Int8Lint(fake_quantize=fused, int8_share=share,
                    f32_weighted_ops=[f"{name} ({kind}, {p})" for name, kind, p in op_precisions if p not in _INT8],
                    saturates=int8_saturates(flags), isa=cpu_isa_name(flags))
