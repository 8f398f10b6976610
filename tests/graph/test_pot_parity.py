"""Placement, levels and ranges of torchpqt against recorded runs of the real POT 2023.3.

Each tests/data/pot/<case>.json holds what POT's DefaultQuantization did to one test model
(tests/models.py) exported to ONNX, with given params and calibration data: every FakeQuantize, the
consumer edges it feeds and its levels/il/ih/ol/oh. The recordings come from
tests/pot_parity/make_pot_goldens.py (see there to regenerate them); these tests need neither POT nor
OpenVINO.

Ops are matched through keys (tests/pot_parity/pot_keys.py): ``[torch module path, op type, occurrence]``,
derived from the ONNX node names on the POT side and from the captured graph on the torch side.

For each case: the number of weight FQs and of the others (activations, GNA outputs) (``test_fq_counts``),
no torchpqt FQ without a POT counterpart (``test_no_extra_fq``), and for every POT FQ (``test_pot_fq``) a
torchpqt FQ feeding exactly the same consumer ports, with the same levels and il/ih/ol/oh within rtol 1e-5
(per channel too). Where POT's params name IR nodes (``ignored.scope``), the recording also holds the
torch-side params (``torchpqt_params``).
Known differences are listed in ``KNOWN`` with the reason; they run as strict xfails, so a fix shows up as
XPASS and the entry must go.
"""

from __future__ import annotations

import fnmatch
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import models
import numpy as np
import pytest
import torch
from pot_keys import assign_keys, leaf_modules, norm_type

import torchpqt
from torchpqt.graph.ops import IDENTITY
from torchpqt.graph.view import GraphView

TESTS = Path(__file__).resolve().parents[1]

GOLDEN_DIR = TESTS / "data" / "pot"
RTOL, ATOL = 1e-5, 1e-8
GOLDENS = {p.stem: p for p in sorted(GOLDEN_DIR.glob("*.json"))}

# (case globs, items: POT FQ names | "counts" | "extra", reason): where torchpqt differs from the recorded
# POT run. Each runs as a strict xfail: when torchpqt changes so that the item passes, remove the entry.
KNOWN: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (("tiny_bert-cpu-performance", "tiny_bert-cpu-mixed"),
     ("/bert/embeddings/Add/fq_weights_1", "/bert/embeddings/Add_1/fq_weights_1", "extra"),
     ("OpenVINO constant-folds the token-type and position embedding lookups (constant ids: the zero "
      "token_type_ids buffer, position_ids[:, :8] at the static sequence length), so POT quantizes the "
      "folded [1, 8, 32] operands of the embedding Adds as eltwise constants (weights FQ, spec §7.2); "
      "torchpqt captures a dynamic sequence length, keeps both Gathers and quantizes the whole tables per "
      "row")),
    (("tiny_bert-cpu-performance", "tiny_bert-cpu-mixed"),
     ("/bert/encoder/layer.0/attention/self/Add/fq_input_1",),
     ("attention mask (values 0 and finfo(float32).min): POT's 'mean' aggregator (aggregation.py::mean, "
      "np.mean over float32 per-sample minima) overflows to -inf, and the range math turns that into "
      "il/ih = -inf/+inf (performance) or 0/0 (mixed); torchpqt aggregates in float64 and gets finite "
      "ranges (-3.09e38/3.06e38 performance, -3.06e38/0 mixed)")),
    (("tiny_bert-cpu-performance",),
     ("counts",),
     ("the same attention-mask FakeQuantize: its symmetric range -3.09e38/3.06e38 spans more than float32 "
      "holds (ih - il overflows, OpenVINO computes NaN), so torchpqt leaves that tensor float "
      "(algorithms/min_max.py _drop_unrepresentable); POT's IR has it, with il/ih -inf/+inf")),
]


def _known(case: str, item: str) -> str | None:
    for patterns, items, reason in KNOWN:
        if item in items and any(fnmatch.fnmatchcase(case, p) for p in patterns):
            return reason
    return None


def _param(case: str, item: str, values, test_id: str):
    reason = _known(case, item)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(*values, id=test_id, marks=marks)


@functools.cache
def golden(case: str) -> dict:
    return json.loads(GOLDENS[case].read_text())


# --- torchpqt side ------------------------------------------------------------------------------------


@dataclass
class TorchFQ:
    name: str
    group: str
    edges: frozenset
    producer: tuple | None
    module: torchpqt.FakeQuantize


def _freeze(key):
    return tuple(_freeze(k) for k in key) if isinstance(key, list) else key


_INT64_MAX = 2 ** 63 - 1


def is_noop(view: GraphView, node: torch.fx.Node) -> bool:
    """No op of the converted model: torchpqt's no-ops, and a whole-axis ``x[:, ...]`` slice (the ONNX
    exporter emits none; OpenVINO's converter drops it). torchpqt keeps the slice as a StridedSlice, an
    agnostic op, so its FQ sits on the same tensor as POT's; this only renames the FQ."""
    if node not in view.ops:
        return False
    if view.type_of(node) == IDENTITY:
        return True
    return (node.target is torch.ops.aten.slice.Tensor and len(node.args) >= 4 and node.args[2] in (0, None)
            and node.args[3] in (None, _INT64_MAX) and (len(node.args) < 5 or node.args[4] == 1))


def _torch_keys(gm: torch.fx.GraphModule, model: torch.nn.Module) -> tuple[GraphView, dict]:
    view = GraphView(gm)

    def through(node):
        # observers torchpqt inserted (call_module) and no-op nodes are not ops of the converted model
        while node is not None and (node.op == "call_module" or is_noop(view, node)):
            node = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        return node

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    order = [n for n in gm.graph.nodes if n.op == "placeholder"
             or (n in view.ops and not view.is_const(n) and not is_noop(view, n))]
    keys = assign_keys(
        order,
        module_of=lambda n: view.ops[n].module_path,
        type_of=lambda n: norm_type(view.type_of(n)),
        input0_of=lambda n: through(view.inputs(n)[0].producer) if view.inputs(n) else None,
        is_input=lambda n: placeholders.index(n) if n.op == "placeholder" else None,
        leaves=leaf_modules(model))
    return through, keys


@functools.cache
def torch_run(case: str, model_name: str | None = None) -> list[TorchFQ]:
    """torchpqt on the recorded model (or ``model_name``), data and params: its FakeQuantize list in key
    terms."""
    rec = golden(case)
    model_name = model_name or rec["model"]
    model = models.build(model_name)
    data = models.calibration_data(model_name, rec["data"]["n"], seed=rec["data"]["seed"])
    # where POT's params name IR nodes (ignored.scope), the recording also holds the torch-side spelling
    q = torchpqt.quantize(model, data, rec.get("torchpqt_params", rec["params"]), progress=False)
    points = q.torchpqt_plan.points
    if not points:
        return []
    gm = points[0].site.tensor.graph.owning_module
    through, keys = _torch_keys(gm, model)
    view = GraphView(gm)

    def consumer_edges(edge):
        """(key, port) of the consumer ports an edge stands for in the converted model: an FQ before a
        no-op (dropout, clone) feeds that no-op's consumers; a network output is a Result, keyed
        ``["<output>", position]`` with port 0 (tests/pot_parity/pot_keys.py)."""
        c = edge.consumer
        if c.op == "call_module":  # an observer of the prepared graph (a statistics probe): not an op
            return []
        if c.op == "output":
            return [(("<output>", edge.port), 0)]
        if is_noop(view, c):
            return [k for e in view.outputs(c) for k in consumer_edges(e)]
        return [(_freeze(keys.get(through(c))), edge.port)]

    out = []
    for p in points:
        edges = frozenset(k for e in p.site.edges for k in consumer_edges(e))
        producer = None if p.group == "weights" else _freeze(keys.get(through(p.site.tensor)))
        out.append(TorchFQ(p.name, p.group, edges, producer, q.get_submodule(p.module_name)))
    return out


def pot_edges(fq: dict) -> frozenset:
    return frozenset((_freeze(e["key"]), e["port"]) for e in fq["edges"])


def _match(case: str, fq: dict) -> TorchFQ | None:
    want = pot_edges(fq)
    return next((t for t in torch_run(case) if t.edges == want), None)


def _describe(edges) -> str:
    return ", ".join(f"{'/'.join(map(str, k)) if k else '<no torch op>'}:{port}"
                     for k, port in sorted(edges, key=str))


# --- comparisons --------------------------------------------------------------------------------------


def range_diffs(fq: dict, t: TorchFQ) -> dict[str, float]:
    """Max relative difference per parameter (inf where shapes disagree)."""
    out = {}
    for k, attr in (("il", "input_low"), ("ih", "input_high"), ("ol", "output_low"), ("oh", "output_high")):
        want = np.asarray(fq[k], dtype=np.float64).reshape(-1)
        got = getattr(t.module, attr).detach().double().numpy().reshape(-1)
        if want.size != got.size:
            out[k] = float("inf")
            continue
        out[k] = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-12))) if want.size else 0.0
    return out


def _check_ranges(fq: dict, t: TorchFQ) -> None:
    levels = int(t.module.levels)
    assert levels == fq["levels"], f"levels: torchpqt {levels}, POT {fq['levels']}"
    for k, attr in (("il", "input_low"), ("ih", "input_high"), ("ol", "output_low"), ("oh", "output_high")):
        want = np.asarray(fq[k], dtype=np.float64).reshape(-1)
        got = getattr(t.module, attr).detach().double().numpy().reshape(-1)
        assert want.size == got.size, \
            f"{k}: torchpqt has {got.size} values, POT {want.size} (POT shape {fq['shape']})"
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{k} of {t.name}")


def _fq_params():
    for case in GOLDENS:
        for name in golden(case)["fake_quantize"]:
            yield _param(case, name, (case, name), f"{case}::{name}")


def _case_params(item: str):
    return [_param(case, item, (case,), case) for case in GOLDENS]


def test_goldens_present():
    assert GOLDENS, f"no recorded POT runs in {GOLDEN_DIR}; run tests/pot_parity/make_pot_goldens.py"


@pytest.mark.parametrize("case, fq_name", list(_fq_params()))
def test_pot_fq(case, fq_name):
    """torchpqt puts an FQ on exactly the consumer ports POT's FQ feeds, with POT's levels and ranges."""
    fq = golden(case)["fake_quantize"][fq_name]
    t = _match(case, fq)
    if t is None:
        want = pot_edges(fq)
        near = [f"{x.name} ({_describe(x.edges)})" for x in torch_run(case) if x.edges & want]
        pytest.fail(f"POT FQ {fq_name} ({'weights' if fq['weights'] else 'activations'}) on "
                    f"[{_describe(want)}] has no torchpqt FQ on the same consumer ports"
                    + (f"; overlapping torchpqt FQs: {near}" if near else ""))
    # the consumer ports fix the quantized tensor; producer keys are informative only (the converter may
    # retype the producer, e.g. Sub(c)->Mul(c) becomes Mul(c)->Add(c))
    # the dump tells weights from the rest only (GNA's "outputs" group is not recorded)
    assert (t.group == "weights") == fq["weights"], f"torchpqt group {t.group}"
    _check_ranges(fq, t)


@pytest.mark.parametrize("case", _case_params("counts"))
def test_fq_counts(case):
    """As many weight FQs and activation FQs as POT."""
    pot = golden(case)["fake_quantize"].values()
    want = (sum(f["weights"] for f in pot), sum(not f["weights"] for f in pot))
    ours = torch_run(case)
    got = (sum(t.group == "weights" for t in ours), sum(t.group != "weights" for t in ours))
    assert got == want, f"(weights, activations and GNA outputs): torchpqt {got}, POT {want}"


@pytest.mark.parametrize("case", _case_params("extra"))
def test_no_extra_fq(case):
    """Every torchpqt FQ has a POT FQ on the same consumer ports."""
    pot = {pot_edges(f) for f in golden(case)["fake_quantize"].values()}
    extra = [f"{t.name} on [{_describe(t.edges)}]" for t in torch_run(case) if t.edges not in pot]
    assert not extra, f"torchpqt FQs that POT does not place: {extra}"


def test_known_entries_exist():
    """Every KNOWN entry names recorded cases and FQs (regenerated goldens may rename generated FQs)."""
    stale = []
    for patterns, items, _ in KNOWN:
        cases = [c for c in GOLDENS if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
        if not cases:
            stale.append(f"no case matches {patterns}")
        for case in cases:
            stale += [f"{case}: no FQ {i!r}" for i in items
                      if i not in ("counts", "extra") and i not in golden(case)["fake_quantize"]]
    assert not stale, stale


# POT 2023.3 fails on these models ("Fake quantize node /embed/Gather/fq_weights_0 does not have a suitable
# configuration for layers []": it moves the ReduceMean's input FQ onto the embedding table, where ReduceMean
# has no weights rule). torchpqt keeps that FQ on the Gather's output, as POT itself does in the recorded
# twin whose second output stops the move: same weights, data and FQ tensors, one extra network output.
POT_FAILS = {"bow_mean": "bow_mean_tokens"}


@pytest.mark.parametrize("preset", ["performance", "mixed"])
@pytest.mark.parametrize("model_name", sorted(POT_FAILS))
def test_where_pot_fails_matches_pot_twin(model_name, preset):
    """torchpqt on a model POT cannot quantize: the FQs, levels and ranges POT gives its recorded twin."""
    case = f"{POT_FAILS[model_name]}-cpu-{preset}"
    pot = golden(case)["fake_quantize"]
    ours = torch_run(case, model_name)
    assert len(ours) == len(pot), [t.name for t in ours]
    for fq_name, fq in pot.items():
        t = next((t for t in ours if t.edges == pot_edges(fq)), None)
        assert t is not None, f"no torchpqt FQ where POT's {fq_name} is; torchpqt: {[x.name for x in ours]}"
        assert (t.group == "weights") == fq["weights"], f"{fq_name}: torchpqt group {t.group}"
        _check_ranges(fq, t)
