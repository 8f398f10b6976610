"""The quantization plan: every FakeQuantize with everything decided except its numbers, and why other ops
got none. Immutable once planned (:mod:`torchpqt.planning` builds it); an algorithm that changes it makes a
new one with :func:`dataclasses.replace`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torchpqt.graph.placement import FQSite
from torchpqt.quant.spec import QuantSpec
from torchpqt.statistics.estimators import StatSpec

__all__ = ["QuantizationPlan", "QuantizationPoint"]


@dataclass(frozen=True)
class QuantizationPoint:
    """One FakeQuantize with everything decided except its numbers.

    Attributes:
        name: POT-style name, ``<consumer scope>/fq_input_<port>`` or ``.../fq_weights_<port>``.
        site: where it sits (tensor, consumer edges).
        spec: its grid (bits, mode, granularity, levels, signed).
        stat_min, stat_max: the statistics its range is computed from.
        unify_group: index of its scale-unification group, or None.
        output_scale: 2.0 for a saturation-fixed weight (stored weights become W/2), else 1.0.
    """

    name: str
    site: FQSite
    spec: QuantSpec
    stat_min: StatSpec | None
    stat_max: StatSpec
    unify_group: int | None = None
    output_scale: float = 1.0

    @property
    def group(self) -> str:
        return self.site.group

    module_name: str = ""  # the FakeQuantize's submodule name, unique in the model (set by the planner)
    # the scope names (as ``ignored.scope`` takes them) of every op this FakeQuantize feeds (set by the planner)
    consumer_scopes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.module_name:
            name = self.name.replace(".", "_").replace("/", "__").replace("-", "_") or "fq"
            object.__setattr__(self, "module_name", name)


@dataclass(frozen=True)
class _SiteRecord:
    group: str
    consumer_types: list


@dataclass(frozen=True)
class _PointRecord:
    """A QuantizationPoint as saved with a model: everything but the graph nodes."""

    name: str
    module_name: str
    spec: object
    output_scale: float
    unify_group: int | None
    site: _SiteRecord
    consumer_scopes: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.site.group


@dataclass(frozen=True)
class QuantizationPlan:
    """Where each FakeQuantize goes and why other ops got none; ``str()`` prints a table.

    Attributes:
        points: the FakeQuantize points, in placement order.
        skipped: scope -> why POT's patterns leave the op unquantized.
        ignored: scope -> which ``ignored`` rule matched it.
        scopes: every op scope of the model (what ``ignored.scope`` accepts).
    """

    points: tuple[QuantizationPoint, ...]
    skipped: Mapping[str, str]
    ignored: Mapping[str, str]
    scopes: tuple[str, ...]

    def __deepcopy__(self, memo):
        # immutable, so shared (like a tuple) between the prepared and the converted model: its points hold
        # the prepared graph's nodes, which convert() maps to the copy by node name
        return self

    def __reduce__(self):
        # torch.save(qmodel): keep what describes the FakeQuantize modules, not the capture-time graph nodes
        records = tuple(_PointRecord(p.name, p.module_name, p.spec, p.output_scale, p.unify_group,
                                     _SiteRecord(p.group, list(p.site.consumer_types)), p.consumer_scopes)
                        for p in self.points)
        return (QuantizationPlan, (records, self.skipped, self.ignored, self.scopes))

    def __str__(self) -> str:
        rows = [f"{'FakeQuantize':<48} {'group':<11} {'levels':>10} {'mode':<10} {'granularity':<11} consumers"]
        for p in self.points:
            rows.append(f"{p.name:<48} {p.group:<11} {p.spec.levels:>10} {p.spec.mode:<10} "
                        f"{p.spec.granularity:<11} {','.join(p.site.consumer_types)}"
                        + ("  (saturation fix)" if p.output_scale != 1.0 else "")
                        + (f"  (unified #{p.unify_group})" if p.unify_group is not None else ""))
        for title, table in (("skipped", self.skipped), ("ignored", self.ignored)):
            for scope, why in table.items():
                rows.append(f"{title}: {scope}  ({why})")
        return "\n".join(rows)
