"""What :func:`torchpqt.exporters.openvino.export` wrote and measured, printable for a person."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ._compare import FQStats, Tolerances
from ._lint import Int8Lint

__all__ = ["ExportReport"]

_INT8 = ("u8", "i8")


@dataclass
class ExportReport:
    """What :func:`~torchpqt.exporters.openvino.export` wrote and measured (numbers are None unchecked).

    The check runs the IR twice on CPU with ``INFERENCE_PRECISION_HINT=f32``. The *simulated* run keeps
    FakeQuantize as f32 arithmetic (the plugin's low-precision transformations off): it is what the
    check judges. The *int8* run is how OpenVINO deploys the IR (u8/i8 kernels where it can); it is
    reported, not judged.

    Attributes:
        path: the IR ``.xml`` (the ``.bin`` sits next to it).
        device: the device the check ran on.
        fq_levels: ``{levels: count}`` of the FakeQuantize nodes in the saved IR (weights stored as
            int8 constants are no longer FakeQuantize nodes).
        fake_quantize: one :class:`FQStats` per activation FakeQuantize: the IR against torch fed the
            IR's upstream levels (input deviation in steps, level flips).
        output_deviation: max |simulated IR output - torch output fed the IR's last levels|, relative
            to the output's largest magnitude.
        simulated: the simulated run really ran FakeQuantize in f32 (False: this OpenVINO refused the
            setting and both runs are the int8 one).
        sim_sqnr_db: SQNR of the simulated IR's outputs against the torch fake-quant model, end to end
            (flips propagate here), worst output.
        max_abs_diff: max |simulated IR - torch| over all outputs, end to end.
        step: quantization step of the activation FakeQuantize nearest the outputs.
        max_diff_steps: ``max_abs_diff / step``.
        int8_sqnr_db: SQNR of the int8 run's outputs against the torch fake-quant model, worst output.
        int8_max_abs_diff: max |int8 IR - torch| over all outputs.
        top1_agreement: share of rows whose argmax (last dim) agrees between the int8 run and torch, over
            the 2-D outputs with more than one column (None without such an output).
        int8_share: share of Convolution/Deconvolution/MatMul/FullyConnected ops whose CPU runtime
            precision is u8/i8 in the int8 run.
        op_precisions: ``(op name, layer type, runtime precision)`` of those ops.
        tolerances: what the check allowed.
        note: how the check was judged, when not layer by layer (GNA targets).
        lint: the int8 lint of the int8 run (:class:`~torchpqt.exporters._lint.Int8Lint`: activation
            FakeQuantize the CPU plugin keeps in f32, int8 share, saturation on this CPU); None unchecked or
            off CPU.
        manifest: the run manifest written beside the IR (``manifest.json``).
    """

    path: Path
    device: str | None = None
    fq_levels: dict[int, int] = field(default_factory=dict)
    fake_quantize: list[FQStats] = field(default_factory=list)
    output_deviation: float | None = None
    simulated: bool | None = None
    sim_sqnr_db: float | None = None
    max_abs_diff: float | None = None
    step: float | None = None
    max_diff_steps: float | None = None
    int8_sqnr_db: float | None = None
    int8_max_abs_diff: float | None = None
    top1_agreement: float | None = None
    int8_share: float | None = None
    op_precisions: list[tuple[str, str, str]] = field(default_factory=list)
    tolerances: Tolerances | None = None
    note: str | None = None
    lint: Int8Lint | None = None
    manifest: Path | None = None

    @property
    def flips(self) -> int:
        """Elements whose level differs, over all activation FakeQuantize."""
        return sum(s.flips for s in self.fake_quantize)

    @property
    def unexplained_flips(self) -> int:
        """Flipped levels whose torch input was not near a rounding tie, over all activation FakeQuantize."""
        return sum(s.unexplained_flips for s in self.fake_quantize)

    @property
    def max_flip_fraction(self) -> float:
        return max((s.flip_fraction for s in self.fake_quantize), default=0.0)

    @property
    def max_input_deviation(self) -> float:
        return max((s.input_deviation for s in self.fake_quantize), default=0.0)

    def failures(self) -> list[str]:
        """Every FakeQuantize (and the outputs) beyond ``tolerances``, in words."""
        if self.tolerances is None:
            return []
        out = [f"'{s.name}': " + "; ".join(why) + (" (its ranges in the IR differ from torch's)"
                                                     if s.ranges_rewritten else "")
               for s in self.fake_quantize if (why := s.violations(self.tolerances))]
        if self.output_deviation is not None and self.output_deviation > self.tolerances.output_rtol:
            out.append(f"outputs off by {self.output_deviation:.3g} of their range (max {self.tolerances.output_rtol:g})")
        return out

    def __str__(self) -> str:
        lines = [f"OpenVINO IR: {self.path}"]
        if self.fq_levels:
            lines.append("  FakeQuantize levels: " + ", ".join(f"{k}×{v}" for k, v in sorted(self.fq_levels.items())))
        if self.device is None:
            return "\n".join([lines[0] + " (not checked)", *lines[1:]])
        lines += self._check_lines()
        if self.int8_share is not None:
            n_int8 = sum(p in _INT8 for _, _, p in self.op_precisions)
            lines.append(f"  int8 weighted ops: {n_int8}/{len(self.op_precisions)} ({self.int8_share:.0%})")
            # the ones that stay float are the news; every op's precision is in ``op_precisions``
            lines += [f"    not int8: {kind:<14} {prec:<5} {name}" for name, kind, prec in self.op_precisions
                      if prec not in _INT8]
        if self.lint is not None:
            lines.append("  " + str(self.lint).replace("\n", "\n  "))
        return "\n".join(lines)

    def _check_lines(self) -> list[str]:
        lines = []
        if self.note:
            lines.append(f"  note: {self.note}")
        if self.fake_quantize or self.output_deviation is not None:
            how = "FakeQuantize simulated in f32" if self.simulated else "int8 kernels (f32 simulation refused)"
            lines.append(f"  layer by layer on {self.device} ({how}, each layer fed the IR's upstream levels):")
            if self.fake_quantize:
                n = sum(s.elements for s in self.fake_quantize)
                worst = max(self.fake_quantize, key=lambda s: s.flip_fraction)
                most = max(s.max_level_difference for s in self.fake_quantize)
                flips = "no level flipped" if not self.flips else (
                    f"{self.flips} of {n} levels flipped by {'one' if most == 1 else f'up to {most}'}, "
                    f"{self.unexplained_flips} away from a rounding tie (worst {worst.flip_fraction:.3%}, "
                    f"in '{worst.name}')")
                lines.append(f"    {len(self.fake_quantize)} activation FakeQuantize: max input deviation "
                             f"{self.max_input_deviation:.2g} steps; {flips}")
            if self.output_deviation is not None:
                lines.append(f"    outputs: max deviation {self.output_deviation:.2g} of their range")
        if self.max_abs_diff is not None:
            steps = "" if self.max_diff_steps is None else f" ({self.max_diff_steps:.3g} steps of {self.step:.4g})"
            lines.append(f"  end to end, simulated vs torch: SQNR {_db(self.sim_sqnr_db)}, "
                         f"max |OpenVINO - torch| = {self.max_abs_diff:.4g}{steps}")
        if self.int8_sqnr_db is not None:
            top1 = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.3f}"
            lines.append(f"  end to end, int8 run vs torch: SQNR {_db(self.int8_sqnr_db)}, "
                         f"max |OpenVINO - torch| = {self.int8_max_abs_diff:.4g}{top1}")
        return lines


def _db(value: float | None) -> str:
    return "n/a" if value is None else ("inf" if value == float("inf") else f"{value:.1f} dB")
