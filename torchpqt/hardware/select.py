"""Choosing one quantization config per FakeQuantize (spec §3.2–§3.4, §8 point 2).

Flow for one FQ: :func:`consumer_candidates` (per-consumer user filter, then intersection over
consumers) -> :func:`select_by_preset`, or :func:`select_unified` for the FQs of one
scale-unification group -> (transformer act x act MatMul inputs: :func:`transformer_matmul_qconfig`)
-> :func:`resolve_spec`. Sources: POT's ``fake_quantize_configuration.py`` and
``fake_quantize.py::compute_levels``/``compute_stats_layouts``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torchpqt.config import QuantizerConfig
from torchpqt.constants import PRESETS
from torchpqt.errors import ConfigError
from torchpqt.hardware.config import GROUPS, HardwareConfig, QConfig
from torchpqt.hardware.user import apply_user_section
from torchpqt.quant.spec import QuantSpec

__all__ = [
    "PRESETS",
    "consumer_candidates",
    "intersect_configs",
    "resolve_spec",
    "select_by_preset",
    "select_unified",
    "transformer_matmul_qconfig",
]


# POT: change_configurations_by_model_type (NPU is listed there too but has no rule file).
_TRANSFORMER_DEVICES = frozenset({"ANY", "CPU", "CPU_SPR", "GPU", "NPU"})


def _pick(left: QConfig, right: QConfig, primary_bitwidth: int | None) -> QConfig:
    if primary_bitwidth and left.bits == primary_bitwidth:
        return left
    if primary_bitwidth and right.bits == primary_bitwidth:
        return right
    return left if left.bits <= right.bits else right


def _match(left: Sequence[QConfig], right: Sequence[QConfig], primary_bitwidth: int | None) -> list[QConfig]:
    result: list[QConfig] = []
    start = 0
    for lhs in left:
        for idx, rhs in enumerate(right[start:]):
            if (lhs.mode, lhs.granularity) == (rhs.mode, rhs.granularity):
                result.append(_pick(lhs, rhs, primary_bitwidth))
                # POT: intersect_configs advances its offset by the index *within* the slice and
                # not past the match, so one right-hand config can pair with several left ones.
                start += idx
                break
    return result


def _with_weaker_variants(configs: Sequence[QConfig]) -> list[QConfig]:
    """Each config preceded by its symmetric / pertensor / both variants, deduplicated.

    The order is POT's ``intersect_configs._extend_configs`` (walk backwards, insert at front).
    """
    out: list[QConfig] = []
    for config in reversed(configs):
        variants = [config]
        if config.granularity == "perchannel":
            variants.append(dataclasses.replace(config, granularity="pertensor"))
        if config.mode == "asymmetric":
            variants.append(dataclasses.replace(config, mode="symmetric"))
        if config.granularity == "perchannel" and config.mode == "asymmetric":
            variants.append(dataclasses.replace(config, mode="symmetric", granularity="pertensor"))
        for variant in variants:
            if variant not in out:
                out.insert(0, variant)
    return out


def intersect_configs(
    left: Sequence[QConfig], right: Sequence[QConfig], primary_bitwidth: int | None = 8
) -> list[QConfig]:
    """Intersects two candidate lists (§3.2).

    Two configs match when mode and granularity agree; of a matching pair the one with
    ``primary_bitwidth`` bits is kept, else the one with fewer bits (the left one on a tie).
    If nothing matches, both lists are extended with their weaker variants (asymmetric ->
    symmetric, perchannel -> pertensor) and matched again.

    Args:
        left, right: candidate lists, in preference order.
        primary_bitwidth: the hardware config's primary bit width (None: fewer bits wins).

    Returns:
        The matched configs in ``left``'s order; empty when even the weaker variants do not meet.
    """
    result = _match(left, right, primary_bitwidth)
    if not result:
        result = _match(_with_weaker_variants(left), _with_weaker_variants(right), primary_bitwidth)
    return result


def consumer_candidates(
    hw: HardwareConfig,
    op_types: Sequence[str],
    group: str,
    *,
    user: QuantizerConfig | Mapping[str, Any] | None = None,
) -> list[QConfig]:
    """The candidate configs of one FQ, from the hardware rules of its consumers (§3.2, §1.3).

    Args:
        hw: the target device's rules.
        op_types: hardware op types of the FQ's valuable consumers, in POT's order (for an
            ``outputs`` FQ: the producer's type). Types without a rule for ``group`` are
            skipped, as POT does.
        group: ``weights``, ``activations`` or ``outputs``.
        user: the user's section for ``group``; it narrows each consumer's list *before* the
            intersection, in POT's order (see :func:`apply_user_section`).

    Returns:
        The intersected candidates, in preference order.

    Raises:
        ConfigError: no consumer has a rule for ``group``, or the user section is invalid.
    """
    if group not in GROUPS:
        raise ConfigError(f"unknown quantization group {group!r}; allowed: {list(GROUPS)}")
    result: list[QConfig] = []
    for op_type in op_types:
        configs = hw.configs(op_type, group)
        if not configs:
            continue
        if user is not None:
            configs = apply_user_section(configs, user, group)
        # POT: an empty running result restarts from the next list (cannot happen here, since
        # the weaker-variant retry always meets on symmetric pertensor).
        result = intersect_configs(result, configs, hw.primary_bitwidth) if result else list(configs)
    if not result:
        raise ConfigError(
            f"no {group} config for consumer op types {list(op_types)}: none of them has a {group} rule "
            f"in the {hw.target_device} hardware config, so this FQ should not have been placed"
        )
    return result


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ConfigError(f"preset={preset!r} is not supported; use one of {list(PRESETS)}")


def select_by_preset(candidates: Sequence[QConfig], preset: str, group: str) -> QConfig:
    """Picks one config by preset (§3.3, POT ``get_configurations_by_preset``).

    Weights: ``accuracy`` takes the last candidate, ``performance``/``mixed`` the first.
    Activations/outputs: ``performance`` takes the first, ``mixed``/``accuracy`` the last.

    Raises:
        ConfigError: unknown preset or group, or no candidates.
    """
    _check_preset(preset)
    if group not in GROUPS:
        raise ConfigError(f"unknown quantization group {group!r}; allowed: {list(GROUPS)}")
    if not candidates:
        raise ConfigError(f"no {group} candidate config to choose from with preset={preset!r}")
    if group == "weights":
        return candidates[-1] if preset == "accuracy" else candidates[0]
    return candidates[0] if preset == "performance" else candidates[-1]


def select_unified(
    candidate_lists: Sequence[Sequence[QConfig]],
    preset: str,
    concat: bool,
    *,
    primary_bitwidth: int | None = 8,
) -> QConfig:
    """One config shared by all activation FQs of a scale-unification group (§3.3 last bullet).

    Args:
        candidate_lists: each member FQ's :func:`consumer_candidates`, in POT's (sorted) order.
        preset: ``performance``, ``mixed`` or ``accuracy``; the activation rule applies.
        concat: True when a Concat is among the group's bridge ops, or the FQ/bridge input
            shapes are unclear or broadcast (POT's three conditions): only pertensor candidates
            are kept.
        primary_bitwidth: the hardware config's primary bit width.

    Raises:
        ConfigError: the intersection is empty.
    """
    _check_preset(preset)
    result: list[QConfig] = []
    for configs in candidate_lists:
        if concat:
            configs = [c for c in configs if c.granularity == "pertensor"]
        # POT: _unify_and_apply_preset restarts from the next member when the running result
        # is empty, so a member without pertensor candidates only matters if it comes last.
        result = intersect_configs(result, configs, primary_bitwidth) if result else list(configs)
    if not result:
        why = " (only pertensor configs are allowed with a Concat)" if concat else ""
        raise ConfigError(
            f"the {len(candidate_lists)} FQs of a scale-unification group have no common config{why}; "
            "add one of them to ignored.scope or change the activations section"
        )
    return select_by_preset(result, preset, "activations")


def transformer_matmul_qconfig(qconfig: QConfig, target_device: str) -> QConfig:
    """§8 point 2: an activation FQ feeding an act x act MatMul becomes symmetric.

    Apply only with ``model_type: transformer`` to an activation FQ whose MatMul consumer has a
    non-constant port 1 (POT checks only the *last* MatMul among the valuable consumers).
    The range estimator stays the one chosen for the original mode, as in POT.

    Returns:
        ``qconfig`` with ``mode='symmetric'`` for ANY/CPU/CPU_SPR/GPU, unchanged otherwise.
    """
    if target_device not in _TRANSFORMER_DEVICES:
        return qconfig
    return dataclasses.replace(qconfig, mode="symmetric")


def resolve_spec(qconfig: QConfig, group: str) -> QuantSpec:
    """The grid of one FQ: levels, level_low, level_high, signed (§3.4).

    Limits not given by the config are derived from bits: ``-2**B/2 (+1 for symmetric
    weights) .. 2**B/2 - 1``. ``signed`` is True only when the config gives both limits and
    ``level_low < 0``; otherwise the data decides the sign of symmetric activations.

    Raises:
        ConfigError: unknown group, or a grid with fewer than two levels.
    """
    if group not in GROUPS:
        raise ConfigError(f"unknown quantization group {group!r}; allowed: {list(GROUPS)}")
    half = 2**qconfig.bits // 2
    narrow = group == "weights" and qconfig.mode == "symmetric"
    low = qconfig.level_low if qconfig.level_low is not None else -half + (1 if narrow else 0)
    high = qconfig.level_high if qconfig.level_high is not None else half - 1
    # POT: compute_levels counts |high| + |low| + 1, which assumes low <= 0 <= high.
    levels = abs(high) + abs(low) + 1
    if levels < 2:
        raise ConfigError(f"{group} config {qconfig.to_dict()} gives {levels} level(s); a grid needs two")
    signed = qconfig.level_low is not None and qconfig.level_high is not None and qconfig.level_low < 0
    return QuantSpec(
        group=group,
        bits=qconfig.bits,
        mode=qconfig.mode,
        granularity=qconfig.granularity,
        level_low=low,
        level_high=high,
        levels=levels,
        signed=signed,
    )
