"""Points that watch the same tensor share one reduction per batch (FastBiasCorrection's input mean of Q, K and V;
a FakeQuantize's range and a bias correction's mean on one tensor), and each point still gets its own statistics."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import torchpqt


class QKV(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(16)
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        h = self.norm(x)
        return self.q(h) + self.k(h) * self.v(h)


class _CountSums(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.sums = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.sum:
            self.sums += 1
        return func(*args, **(kwargs or {}))


def test_one_mean_reduction_per_watched_tensor():
    data = [torch.randn(1, 5, 16) for _ in range(4)]
    prepared = torchpqt.prepare(QKV().eval(), data[0])
    requests = prepared.torchpqt_schedule.stages[0].requests
    means = [r for r in requests if any(s.type == "mean" for s in r.specs)]
    tensors = {(r.tensor, r.channel_axis) for r in means}
    assert len(means) > len(tensors)  # Q, K and V each ask for the mean of the LayerNorm output
    with torch.no_grad():
        for x in data[:-1]:
            prepared(x)
        with _CountSums() as counted:
            prepared(data[-1])
    assert counted.sums == len(tensors)
    store = torchpqt.collect_statistics(prepared)
    # every point has exactly its own statistics
    for r in requests:
        assert {k for p, k in store if p == r.point} >= {s.statistic_key for s in r.specs}
        assert {k for p, k in store if p == r.point} - {"batch_shapes"} == {s.statistic_key for s in r.specs}
    shared = max(tensors, key=lambda t: sum((r.tensor, r.channel_axis) == t for r in means))
    first, second = [r for r in means if (r.tensor, r.channel_axis) == shared][:2]
    key = next(s.statistic_key for s in first.specs if s.type == "mean")
    assert torch.equal(store[(first.point, key)]["batch_values"], store[(second.point, key)]["batch_values"])


def test_a_probe_sharing_a_tensor_is_not_called_and_still_gets_its_shapes():
    """A probe whose statistics another observer of the same tensor computes is not put in the graph (no call per
    batch); its batch shapes and rank come from that observer, so bias correction still reads every batch's shape."""
    from torchpqt.observer import SHAPES, Observer

    data = [torch.randn(b, 5, 16) for b in (1, 3, 2)]
    prepared = torchpqt.prepare(QKV().eval(), data[0], {"stat_subset_size": 6, "stat_batch_size": 1})
    observers = {name: m for name, m in prepared.named_modules() if isinstance(m, Observer)}
    called = {n.target for n in prepared.graph.nodes if n.op == "call_module" and n.target in observers}
    sourced = {name for name, m in observers.items() if m.source is not None}
    assert sourced and not sourced & called  # the shared probes are not in the graph
    assert {observers[name].source for name in sourced} <= {observers[name] for name in called}
    with torch.no_grad():
        for x in data:
            prepared(x)
    store = torchpqt.collect_statistics(prepared)
    requests = prepared.torchpqt_schedule.stages[0].requests
    with_shapes = [r for r in requests if r.shapes]
    assert any(r.module_name in sourced for r in with_shapes)
    for r in with_shapes:
        assert store[(r.point, SHAPES)]["samples"].tolist() == [list(x.shape) for x in data]
        assert store[(r.point, SHAPES)]["rank"] == 3
    for r in requests:  # a point that asked for no shapes records none, even where a probe made its observer keep them
        if not r.shapes:
            assert (r.point, SHAPES) not in store
