"""Will int8 convolution saturate on this CPU? (beyond POT: an advice, nothing changes in the model)

OpenVINO's int8 convolutions and MatMuls on x86 multiply u8 activations by s8 weights. With VNNI (AVX512-VNNI,
AVX-VNNI) or AMX the products accumulate in int32. Without them (AVX2-only CPUs, common in cloud VMs), the
kernels use ``vpmaddubsw``, which adds pairs of u8 x s8 products into a saturating int16: large activations
times large weights clip. POT's ``saturation_fix: first_layer`` halves the weights of the first convolutions
only (spec §4.6), where inputs are widest; on such a CPU the later layers still saturate, and
``saturation_fix: "all"`` (7-bit weights everywhere) avoids it at the cost of a coarser weight grid.

The CPU is read from ``/proc/cpuinfo``'s flags (OpenVINO's ``OPTIMIZATION_CAPABILITIES`` says ``INT8`` on both
kinds, so it cannot tell them apart). The advice is about the machine quantizing, which is often the one that
runs the model; it says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from torchpqt._once import log_once

__all__ = ["INT8_DOT_FLAGS", "advise_saturation", "cpu_flags", "cpu_isa_name", "int8_saturates", "isa_flags",
           "saturation_advice"]

#: CPU flags of an int8 dot product that accumulates in int32 (no int16 saturation).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# weighted op types a saturation fix "all" covers (POT set_rescaling_factors)
_FIXABLE = ("Convolution", "GroupConvolution", "DepthWiseConvolution", "ConvolutionBackpropData",
            "GroupConvolutionBackpropData", "MatMul")


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags (first ``flags`` line), or None where unknown (not Linux, not x86)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        return None
    return None


def cpu_isa_name(flags: Iterable[str] | None) -> str:
    """This CPU's int8 dot-product instruction sets, e.g. ``AVX512-VNNI + AMX`` or ``AVX2 (no VNNI)``."""
    if flags is None:
        return "unknown CPU"
    flags = set(flags)
    names = [n for f, n in (("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"), ("amx_int8", "AMX"))
             if f in flags]
    if names:
        return " + ".join(names)
    return "AVX2 (no VNNI)" if "avx2" in flags else "no x86 int8 dot product"


#: the flags the benchmarks print next to every figure
_BENCH_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def isa_flags(flags: Iterable[str] | None = None) -> str:
    """This CPU's vector / int8 flags as benchmarks print them, e.g. ``avx2 avx512f avx512_vnni amx_int8``
    (default: this machine's, :func:`cpu_flags`)."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return "unknown"
    return " ".join(f for f in _BENCH_FLAGS if f in flags) or "no AVX2"


def int8_saturates(flags: Iterable[str] | None) -> bool | None:
    """True for an x86 CPU without VNNI/AMX (u8 x s8 int8 saturates), False with them, None when unknown
    (no flags, or not an x86 CPU: no ``avx2``/``sse4_2`` flag)."""
    if flags is None:
        return None
    flags = set(flags)
    if not flags & {"avx2", "sse4_2"}:
        return None
    return not flags & set(INT8_DOT_FLAGS)


def saturation_advice(plan, config, flags: Iterable[str] | None) -> str | None:
    """The line to log, or None. Advises ``saturation_fix: "all"`` when all of these hold: the target is CPU or
    ANY, the config uses ``first_layer`` (``all`` covers everything; ``no`` is the user's explicit choice), the
    CPU's int8 saturates (:func:`int8_saturates`), the model has a quantized convolution (POT's fix, ``all``
    included, does nothing without one), and some 8-bit quantized weight of a convolution or MatMul is not
    covered by the first-layer fix."""
    if config.target_device not in ("CPU", "ANY") or config.saturation_fix != "first_layer":
        return None
    if not int8_saturates(flags):
        return None
    weighted = [p for p in plan.points if p.group == "weights" and p.spec.levels <= 256
                and p.site.consumer_types and p.site.consumer_types[0] in _FIXABLE]
    left = [p for p in weighted if p.output_scale == 1.0]
    if not left or not any(p.site.consumer_types[0] != "MatMul" for p in weighted):
        # POT applies no saturation fix, "all" included, to a model without a convolution
        return None
    return (f"this CPU has no VNNI/AMX int8 dot product (AVX2-only), so OpenVINO's u8 x s8 int8 convolutions "
            f"saturate; saturation_fix 'first_layer' covers {len(weighted) - len(left)} of {len(weighted)} "
            "quantized convolution/MatMul layers: if the model runs on such a CPU, set saturation_fix: \"all\"")


def advise_saturation(plan, config, flags: Iterable[str] | None = None) -> None:
    """Log :func:`saturation_advice` once per call (flags: this machine's, read from /proc/cpuinfo)."""
    message = saturation_advice(plan, config, cpu_flags() if flags is None else flags)
    if message is not None:
        log_once(("saturation advice",), logging.WARNING, message)
