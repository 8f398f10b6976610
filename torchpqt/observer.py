"""Observers: what a calibration pass watches, how it is put into the graph, and how its statistics are read
out into a :class:`~torchpqt.statistics.StatisticsStore`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx

from torchpqt.errors import TorchPQTError
from torchpqt.graph.view import Edge
from torchpqt.statistics.collector import TensorStatistics
from torchpqt.statistics.estimators import StatSpec
from torchpqt.statistics.store import StatisticsStore

__all__ = ["SHAPES", "Observer", "StatisticRequest", "batch_shapes", "collect", "instrument", "remove_probes",
           "store_entries"]

#: Store key of the recorded batch shapes of a point (``StatisticRequest(shapes=True)``).
SHAPES = "batch_shapes"


class Observer(torch.nn.Module):
    """Records the statistics of the tensor passing through and returns it unchanged.

    Calibration therefore runs the FP32 network, as POT did: every activation range is a
    statistic of the float model (spec §2, pass #2).

    An observer with a ``source`` is not in the graph: another observer of the same tensor (the one computing their
    shared statistics) sees every batch for it, and its rank and batch shapes are that observer's (see
    :func:`instrument`).
    """

    def __init__(self, name: str, stats: TensorStatistics, record_shapes: bool = False, computes: bool = True,
                 source: Observer | None = None):
        super().__init__()
        self.point_name = name
        self.stats = stats
        #: False: another observer of the same tensor updates the shared ``stats`` (see :func:`instrument`)
        self.computes = computes
        self._ndim: int | None = None
        # a sourced observer is not called: its shapes are its source's (see ``shapes``)
        self._shapes: list[tuple[int, ...]] | None = [] if record_shapes and source is None else None
        self._wants_shapes = record_shapes
        self.__dict__["_source"] = source  # a plain reference, not a submodule
        if source is not None and record_shapes and source._shapes is None:
            source._shapes = []  # the source records the shapes for this observer too

    @property
    def source(self) -> Observer | None:
        return self.__dict__["_source"]

    @property
    def ndim(self) -> int | None:
        return self._ndim if self.source is None else self.source.ndim

    @property
    def shapes(self) -> list[tuple[int, ...]] | None:
        """The batch shapes, where this observer's request asked for them (:class:`StatisticRequest`)."""
        if not self._wants_shapes:
            return None
        return self._shapes if self.source is None else self.source._shapes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and not torch.compiler.is_compiling():
            if self.computes:
                self.stats.update(x)
            if self._shapes is not None:
                self._shapes.append(tuple(x.shape))
            if self._ndim is None:  # nn.Module attribute writes are slow: once is enough
                self._ndim = x.dim()
        return x

    def extra_repr(self) -> str:
        return f"{self.point_name!r}, batches={self.stats.num_batches}"


@dataclass(frozen=True)
class StatisticRequest:
    """One tensor an algorithm wants observed in a calibration pass. Plain data (graph nodes by name), so a
    prepared model's schedule copies and pickles without its graph.

    Attributes:
        point: the store's point name; unique across the algorithms of a pipeline.
        tensor: the fx node whose output is observed.
        specs: the statistics to collect there.
        module_name: the observer's submodule name, unique in the model.
        consumers: ``(consumer node, arg, sub, port)`` edges routed through the observer: an inline observer
            the algorithm later replaces (MinMaxQuantization puts its activation FakeQuantize there). Empty:
            a probe that nothing reads, removed once the pass is collected.
        channel_axis: the channel axis of per-channel statistics.
        inplace: POT's ``inplace_statistics`` for these statistics.
        after: a probe's place: right after this node (default: after ``tensor``), e.g. after the op reading
            ``tensor``, so that a sample the op cannot take fails in the op, with the op's error.
        shapes: also record every batch's shape (store key :data:`SHAPES`; POT's input shapes of
            FastBiasCorrection).
    """

    point: str
    tensor: str
    specs: tuple[StatSpec, ...]
    module_name: str
    consumers: tuple[tuple[str, int, int | None, int], ...] = ()
    channel_axis: int = 1
    inplace: bool = False
    shapes: bool = False
    after: str = ""


def _nodes(gm: fx.GraphModule) -> dict[str, fx.Node]:
    return {n.name: n for n in gm.graph.nodes}


def insert_inline(gm: fx.GraphModule, module_name: str, tensor: fx.Node, edges: Sequence[Edge],
                  order: dict[fx.Node, int]) -> fx.Node:
    """Insert ``gm.<module_name>(tensor)`` before the first of ``edges``' consumers and route those edges
    through it."""
    first = min((e.consumer for e in edges), key=order.__getitem__)
    with gm.graph.inserting_before(first):
        node = gm.graph.call_module(module_name, (tensor,))
    for e in edges:
        e.rewire(node)
    return node


def edges_of(nodes: dict[str, fx.Node], tensor: str,
             consumers: Sequence[tuple[str, int, int | None, int]]) -> list[Edge]:
    return [Edge(nodes[tensor], nodes[c], arg, sub, port) for c, arg, sub, port in consumers]


def instrument(gm: fx.GraphModule, requests: Sequence[StatisticRequest], *, passive: frozenset[str] = frozenset(),
               record: bool = False) -> None:
    """Add an :class:`Observer` for every request (the caller lints and recompiles).

    Args:
        passive: points whose statistics are known already (a statistics cache): their observer is put in
            place (the graph is the same) but computes nothing.
        record: the other observers also keep every batch's reduced values (``stats.records``) for a cache.
    """
    nodes = _nodes(gm)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    # Requests on one tensor with the same channel axis and inplace mode share one TensorStatistics: each
    # reduction runs once per batch (FastBiasCorrection's input mean of Q, K and V; a FakeQuantize's range and a
    # bias correction mean), computed by the group's first observer; each point reads its own statistics.
    shared: dict[tuple, TensorStatistics] = {}
    groups: dict[tuple, list[StatisticRequest]] = {}
    for r in requests:
        if r.point not in passive:
            groups.setdefault((r.tensor, r.channel_axis, r.inplace), []).append(r)
    for key, group in groups.items():
        stats = TensorStatistics(tuple(spec for g in group for spec in g.specs), channel_axis=key[1],
                                 inplace=key[2])
        if record:
            stats.records = {}
        shared[key] = stats
    computing: dict[tuple, Observer] = {}
    for r in requests:
        quiet = r.point in passive
        key = (r.tensor, r.channel_axis, r.inplace)
        stats = TensorStatistics((), channel_axis=r.channel_axis, inplace=r.inplace) if quiet else shared[key]
        computes = not quiet and groups[key][0] is r  # a passive point's statistics come from elsewhere
        # a probe on a tensor whose statistics another observer computes needs no call of its own per batch
        source = computing[key] if not (quiet or computes or r.consumers) else None
        obs = Observer(r.point, stats, record_shapes=r.shapes and not quiet, computes=computes, source=source)
        gm.add_submodule(r.module_name, obs)
        if computes:
            computing[key] = obs
        if source is not None:
            continue
        tensor = nodes[r.tensor]
        if r.consumers:
            insert_inline(gm, r.module_name, tensor, edges_of(nodes, r.tensor, r.consumers), order)
        elif r.after:
            with gm.graph.inserting_after(nodes[r.after]):
                gm.graph.call_module(r.module_name, (tensor,))
        elif tensor.op == "placeholder":  # after the last placeholder: the graph's inputs stay together
            last = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
            with gm.graph.inserting_after(last):
                gm.graph.call_module(r.module_name, (tensor,))
        else:
            with gm.graph.inserting_after(tensor):
                gm.graph.call_module(r.module_name, (tensor,))


def remove_probes(gm: fx.GraphModule, requests: Sequence[StatisticRequest]) -> None:
    """Remove the probes among ``requests`` (statistics only: not part of the converted model)."""
    for r in requests:
        if r.consumers:
            continue
        for node in [n for n in gm.graph.nodes if n.op == "call_module" and n.target == r.module_name]:
            gm.graph.erase_node(node)
        delattr(gm, r.module_name)


def collect(gm: fx.GraphModule, requests: Sequence[StatisticRequest]) -> StatisticsStore:
    """The statistics the observers of ``requests`` collected; an observer no batch reached has none."""
    entries = {}
    for r in requests:
        obs = gm.get_submodule(r.module_name)
        if obs.stats.num_batches == 0:
            continue
        entries.update(store_entries(r.point, obs.stats, obs.ndim, obs.shapes, specs=r.specs))
    return StatisticsStore(entries)


def store_entries(point: str, stats: TensorStatistics, rank: int | None, shapes: list | None,
                  specs: Sequence[StatSpec] | None = None) -> dict:
    """The store entries of one observed tensor: every statistic's state (only those of ``specs`` when given:
    ``stats`` may be shared with other points on the tensor), and the batch shapes if recorded."""
    wanted = None if specs is None else {spec.statistic_key for spec in specs}
    entries = {(point, key): {**state, "rank": rank} for key, state in stats.states().items()
               if wanted is None or key in wanted}
    if shapes:
        # kept like a per-sample aggregator's values, so stores merge by concatenation
        entries[(point, SHAPES)] = {"aggregator": "shapes", "samples": torch.tensor(shapes),
                                    "batches": len(shapes), "per_batch": False, "rank": rank}
    return entries


def batch_shapes(store: StatisticsStore, point: str) -> list[tuple[int, ...]]:
    """The shapes of the batches observed at ``point`` (recorded with ``StatisticRequest(shapes=True)``).

    Raises:
        TorchPQTError: none were recorded.
    """
    state = store.get((point, SHAPES))
    if state is None:
        raise TorchPQTError(f"no batch shapes of {point!r} in the statistics store: calibrate again with this "
                            "config (a store saved by an older torchpqt lacks them)")
    return [tuple(int(v) for v in row) for row in state["samples"].tolist()]
