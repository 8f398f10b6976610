"""torchpqt.quantize on the models and data of the POT weight/bias recordings (tests/data/pot/biases/), with
the recorded params, matched to POT's FakeQuantize ranges and corrected biases (shared by the parity tests)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import models
import numpy as np
import pot_biases
import torch

import torchpqt
from torchpqt.algorithms.layers import layer_of
from torchpqt.algorithms.subgraph import Evaluator, Topology, placeholder_values
from torchpqt.graph.ops import module_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "graph"))
from test_pot_parity import _freeze, _torch_keys, is_noop, pot_edges

from torchpqt.graph.view import GraphView


@functools.cache
def run(case: str):
    """(record, the converted model, {POT FQ name: torch FakeQuantize}, {module path: (torch bias, POT bias,
    output range)})."""
    rec = pot_biases.load(case)
    name = rec["model"]
    model = models.build(name)
    data = models.calibration_data(name, rec["data"]["n"], seed=rec["data"]["seed"])
    q = torchpqt.quantize(model, data, rec["params"], progress=False)
    return rec, q, _fq_pairs(rec, q, model), _bias_pairs(rec, q, data)


def _fq_pairs(rec, q, model) -> dict:
    gm = q.torchpqt_plan.points[0].site.tensor.graph.owning_module
    through, keys = _torch_keys(gm, model)
    view = GraphView(gm)
    # the points channel alignment retargeted refer to the converted graph's nodes: match by name
    by_name = {n.name: n for n in gm.graph.nodes}

    def consumer_edges(edge):
        c = by_name[edge.consumer.name]
        if c.op == "call_module":  # an observer of the prepared graph (a statistics probe): not an op
            return []
        if c.op == "output":
            return [(("<output>", edge.port), 0)]
        if is_noop(view, c):
            return [k for e in view.outputs(c) for k in consumer_edges(e)]
        return [(_freeze(keys.get(through(c))), edge.port)]

    ours = {frozenset(k for e in p.site.edges for k in consumer_edges(e)): q.get_submodule(p.module_name)
            for p in q.torchpqt_plan.points}
    return {fq_name: ours.get(pot_edges(fq)) for fq_name, fq in rec["fake_quantize"].items()}


def _bias_pairs(rec, q, data) -> dict:
    pot = pot_biases.biases(rec)
    nodes = [n for n in q.graph.nodes if layer_of(q, n) is not None and pot.get(module_path(n)) is not None]
    ev = Evaluator(Topology(q), fp32=True)
    need = ev.needed(nodes, ())
    lo = {n: np.inf for n in nodes}
    hi = {n: -np.inf for n in nodes}
    with torch.no_grad():
        for x in data[:rec["params"].get("stat_subset_size", len(data))]:
            env = ev.evaluate(need, {}, placeholder_values(q, x if isinstance(x, tuple) else (x,), {}))
            for n in nodes:
                lo[n], hi[n] = min(lo[n], float(env[n].min())), max(hi[n], float(env[n].max()))
    out = {}
    for n in nodes:
        layer = layer_of(q, n)
        want = pot[module_path(n)]
        got = layer.bias.numpy() if layer.bias is not None else np.zeros_like(want)
        out[module_path(n)] = (got, want, hi[n] - lo[n])
    return out
