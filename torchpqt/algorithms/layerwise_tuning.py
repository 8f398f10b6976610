"""LayerwiseTuning (``use_layerwise_tuning``, spec §11), with torch autograd, and two things POT lacked.

POT's algorithm (QuantizeModelFinetuning): every tuned unit (see :mod:`torchpqt.algorithms.tuning_units`)
is optimized against its *local* MSE to the FP32 model's tensor at the same place, all units at once
("simultaneous", 200 steps of 25 samples by default): each step draws ``batch_size`` samples from a pool of
``calibration_indices_pool`` calibration samples, runs the FP32 reference and the current quantized model,
and steps one optimizer over the per-group learning rates (weights, bias, weight/input FakeQuantize
scale and min, lone FakeQuantize scale and min). Ranges are trained through the shared parameterization
of :mod:`torchpqt.quant.trainable` (POT's ``log`` of the width; ``min`` only with ``asymmetric``);
gradients pass rounding straight through. The FP32 reference is the model as captured (POT's deepcopy
of the original model, before channel alignment and bias correction).

Beyond POT:

* ``tuning_mode: "sequential"``: the units one by one in topological order, each on the inputs the
  already-tuned quantized units before it produce (error-propagation aware, as AdaRound / BRECQ
  reconstruct block by block); the same number of steps per unit.
* A per-unit guard (``tuning_guard`` ``"layer"`` or ``"both"``): on ``tuning_guard_samples`` held-out calibration samples (not in
  the pool when the data has more, else split off it), a unit whose local loss ends higher than with its
  parameters before tuning (same inputs) gets those parameters back; every unit's before/after loss is
  logged and kept in ``model.torchpqt_tuning`` (the CLI writes it to report.json).
* A whole-model guard (``tuning_guard`` ``"model"`` or ``"both"``, the default): on the same held-out
  samples, the network-output loss (MSE to FP32 over FP32's mean square, per output) before tuning and
  after; if it rose, every unit gets its parameters from before tuning back (``model.torchpqt_tuning_model``).

Memory: one batch of the tuned units' inputs and targets at a time (each step runs the FP32 and the
quantized model on that batch's samples alone; the interpreters free every other tensor after its last use).
The calibration data is read a pass at a time (counting, POT's ranking subset, collecting); only the model
inputs of the tuning pool and of the held-out samples are kept for the run (the user's samples, at most
``calibration_indices_pool + tuning_guard_samples``), never activations. Runs on the model's device. Afterwards every range is frozen back into buffers (the model exports as before) and the
FakeQuantize placement is unchanged.
"""

from __future__ import annotations

import logging
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx
from torch.utils import _pytree as pytree
from tqdm.auto import tqdm

from torchpqt.algorithms.base import Algorithm
from torchpqt.algorithms.layers import drop_unused_constants
from torchpqt.algorithms.tuning_units import Capture, Unit, find_units, flat_inputs, make_trainable
from torchpqt.calibration import _concat, _num_samples, _slice, model_device, to_device
from torchpqt.errors import TorchPQTError
from torchpqt.quant.fake_quantize import FakeQuantize
from torchpqt.quant.params import FQParams

__all__ = ["ALGORITHM", "run", "tune"]

logger = logging.getLogger("torchpqt")

_EPS = 1e-8  # POT's _safety_eps


def _stream(data):
    """Every calibration sample as a one-row ``(args, kwargs)`` call, in the sampler's order, read one
    inference batch at a time (one pass of the data)."""
    for batch in data.batches():
        call = (tuple(batch[0]), dict(batch[1]))
        n = _num_samples(call)
        if n == 1:
            yield call
            continue
        for i in range(n):  # an own copy: a view would keep the whole batch alive
            yield pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x,
                                  _slice(call, i, i + 1, n))


def _count(data) -> int:
    return sum(1 for _ in _stream(data))


def _keep(data, wanted) -> dict[int, tuple[tuple, dict]]:
    """The samples at the ``wanted`` indices (the pool and the held-out samples), from one pass."""
    wanted = set(wanted)
    return {i: row for i, row in enumerate(_stream(data)) if i in wanted}


def _stack(rows, indices, device) -> tuple[tuple, dict]:
    calls = [rows[i] for i in indices]
    args, kwargs = _concat(calls, [(i, 0, 1, 1) for i in indices])
    return to_device((tuple(args), dict(kwargs)), device)


class _Models:
    """The quantized model and the FP32 reference, read one batch at a time."""

    def __init__(self, qm: fx.GraphModule, plan, rows, device) -> None:
        self.qm, self.rows, self.device = qm, rows, device
        owner = None
        points = getattr(plan, "points", ())
        if points and hasattr(points[0].site, "tensor"):
            owner = points[0].site.tensor.graph.owning_module  # the prepared (FP32, captured) model
        self.fp, self.fp_is_q = (owner, False) if owner is not None else (qm, True)
        if owner is None:
            logger.warning("layerwise tuning: the captured FP32 model is not available (a reloaded plan); "
                           "the reference is the converted model with FakeQuantize bypassed, which includes "
                           "the bias corrections")

    def fp_names(self) -> set[str]:
        return {n.name for n in self.fp.graph.nodes}

    def stack(self, indices) -> tuple[tuple, dict]:
        return _stack(self.rows, indices, self.device)

    def capture(self, indices, q_wanted, fp_wanted) -> tuple[dict, dict]:
        args, kwargs = self.stack(indices)
        fp = Capture(self.fp, fp_wanted, float_model=True).capture(flat_inputs(self.fp, args, kwargs))
        q = Capture(self.qm, q_wanted).capture(flat_inputs(self.qm, args, kwargs))
        return q, fp


def _chunks(indices, size):
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def _split(n: int, cfg, rng: random.Random) -> tuple[list[int], list[int]]:
    """(the tuning pool, the guard's held-out samples)."""
    everything = list(range(n))
    pool = everything if cfg.calibration_indices_pool >= n else rng.sample(everything, cfg.calibration_indices_pool)
    if not cfg.tuning_guard:
        return pool, []
    rest = sorted(set(everything) - set(pool))
    if rest:
        return pool, rest if len(rest) <= cfg.tuning_guard_samples else rng.sample(rest, cfg.tuning_guard_samples)
    k = min(cfg.tuning_guard_samples, len(pool) // 4)
    if k == 0:
        logger.info("layerwise tuning: %d calibration sample(s) leave none to hold out; the guard uses the "
                    "tuning pool", n)
        return pool, list(pool)
    return pool[:-k], pool[-k:]


class _Params:
    """A unit's trained tensors, by learning-rate group, and its snapshot for the guard."""

    def __init__(self, qm, unit: Unit, owns_input_fq: bool) -> None:
        self.groups: dict[str, list[torch.nn.Parameter]] = {}
        if unit.layer is not None:
            self.groups["weights_lr"] = [getattr(qm, unit.weight_attr)]
            if unit.bias_attr is not None:
                self.groups["bias_lr"] = [getattr(qm, unit.bias_attr)]
            self._fq(qm.get_submodule(unit.weight_fq), "weight_fq_")
            if unit.input_fq is not None and owns_input_fq:
                self._fq(qm.get_submodule(unit.input_fq), "input_fq_")
        elif owns_input_fq:
            self._fq(qm.get_submodule(unit.input_fq), "")
        self.snapshot = [p.detach().clone() for p in self.all()]

    def _fq(self, fq: FakeQuantize, prefix: str) -> None:
        self.groups.setdefault(prefix + "scale_lr", []).append(fq.log_scale)
        if "min_shift" in fq._parameters:
            self.groups.setdefault(prefix + "min_lr", []).append(fq.min_shift)

    def all(self) -> list[torch.nn.Parameter]:
        return [p for ps in self.groups.values() for p in ps]

    @torch.no_grad()
    def swap(self, values) -> list[torch.Tensor]:
        old = [p.detach().clone() for p in self.all()]
        for p, v in zip(self.all(), values):
            p.copy_(v)
        return old


def _optimizer(params: list[_Params], cfg):
    groups: dict[str, list] = {}
    for p in params:
        for name, ps in p.groups.items():
            groups.setdefault(name, []).extend(ps)
    if not groups:
        return None
    opt = torch.optim.Adam if cfg.optimizer == "Adam" else torch.optim.SGD
    return opt([{"params": ps, "lr": getattr(cfg, name)} for name, ps in groups.items()],
               lr=0.0, weight_decay=cfg.weight_decay)


def _inputs(unit: Unit, q, fp, cfg) -> torch.Tensor:
    return (fp if cfg.use_only_fp_inputs else q)[unit.in_node]


def _wanted(units, cfg) -> tuple[set, set]:
    q = set() if cfg.use_only_fp_inputs else {u.in_node for u in units}
    fp = {u.out_node for u in units} | ({u.in_node for u in units} if cfg.use_only_fp_inputs else set())
    return q, fp


def _loop(models: _Models, units: list[Unit], params: list[_Params], pool, cfg, rng, bar) -> None:
    """POT's fine-tuning loop over ``units`` (all of them at once, or one in sequential mode)."""
    opt = _optimizer(params, cfg)
    if opt is None:
        return
    batch = min(cfg.batch_size, len(pool))
    steps = max(1, cfg.num_samples_for_tuning // batch)
    q_wanted, fp_wanted = _wanted(units, cfg)
    initial, previous, q, fp = None, -1.0, None, None
    for step in range(steps):
        if step == 0 or cfg.update_every_batch:
            q, fp = models.capture(rng.sample(pool, batch), q_wanted, fp_wanted)
        eager = not cfg.calculate_grads_on_loss_increase_only
        losses = []
        for u in units:
            loss = F.mse_loss(u.forward(models.qm, _inputs(u, q, fp, cfg)), fp[u.out_node])
            if eager:  # backward at once: one unit's autograd graph alive at a time, not all of them
                loss.backward()
                loss = loss.detach()
            losses.append(loss)
        values = torch.stack([loss.detach() for loss in losses])
        if initial is None:
            initial = values + _EPS
        weighted = float((values / initial).mean())
        if eager or weighted >= previous:
            if not eager:
                torch.stack(losses).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        previous = weighted
        if cfg.set_quantized_values_to_weight_parameter:
            with torch.no_grad():
                for u in units:
                    if u.layer is not None:
                        w = getattr(models.qm, u.weight_attr)
                        w.copy_(models.qm.get_submodule(u.weight_fq)(w))
        if step % cfg.loss_logging_freq == 0:
            logger.debug("layerwise tuning: step %d/%d, weighted loss %.6g", step + 1, steps, weighted)
        bar.set_postfix(loss=f"{weighted:.4g}", refresh=False)
        bar.update(1)


@torch.no_grad()
def _guard(models: _Models, units: list[Unit], params: list[_Params], holdout, cfg, report) -> None:
    """Local held-out loss of each unit with its tuned and its previous parameters on the same inputs;
    with the layer guard on, restore the previous ones where tuning made it worse."""
    if not holdout:
        return
    q_wanted, fp_wanted = _wanted(units, cfg)
    after: list = [0.0] * len(units)  # float64 sums kept on the device: one host read at the end
    before: list = [0.0] * len(units)
    for chunk in _chunks(holdout, max(1, cfg.batch_size)):
        q, fp = models.capture(chunk, q_wanted, fp_wanted)
        w = len(chunk) / len(holdout)
        for i, (u, p) in enumerate(zip(units, params)):
            x, target = _inputs(u, q, fp, cfg), fp[u.out_node]
            after[i] = after[i] + w * F.mse_loss(u.forward(models.qm, x), target).double()
            tuned = p.swap(p.snapshot)
            before[i] = before[i] + w * F.mse_loss(u.forward(models.qm, x), target).double()
            p.swap(tuned)
    after, before = [float(v) for v in after], [float(v) for v in before]
    for u, p, b, a in zip(units, params, before, after):
        restored = a > b and cfg.tuning_guard in ("layer", "both")
        if restored:
            p.swap(p.snapshot)
            logger.info("layerwise tuning: %s: held-out loss rose %.6g -> %.6g; its parameters are restored",
                        u.name, b, a)
        else:
            logger.debug("layerwise tuning: %s: held-out loss %.6g -> %.6g", u.name, b, a)
        report[u.name] = {"loss_before": b, "loss_after": b if restored else a, "restored": restored}


def _output_names(gm: fx.GraphModule) -> list[str]:
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    return list(_leaf_nodes(output.args))


@torch.no_grad()
def _output_loss(models: _Models, holdout, cfg) -> float:
    """The network-output error of the quantized model on ``holdout``: per floating-point output, the MSE to
    the FP32 output over the FP32 output's mean square (1 / SQNR), summed over outputs."""
    q_names, fp_names = _output_names(models.qm), _output_names(models.fp)
    err = [0.0] * len(q_names)
    power = [0.0] * len(q_names)
    for chunk in _chunks(holdout, max(1, cfg.batch_size)):
        args, kwargs = models.stack(chunk)
        q = Capture(models.qm, set(q_names)).capture(flat_inputs(models.qm, args, kwargs))
        fp = Capture(models.fp, set(fp_names), float_model=True).capture(flat_inputs(models.fp, args, kwargs))
        for i, (a, b) in enumerate(zip(q_names, fp_names)):
            qa, fb = q.get(a), fp.get(b)
            if isinstance(qa, torch.Tensor) and isinstance(fb, torch.Tensor) and fb.is_floating_point():
                err[i] += float((qa.double() - fb.double()).pow(2).sum())
                power[i] += float(fb.double().pow(2).sum())
    return sum(e / max(p, 1e-30) for e, p in zip(err, power) if p or e)


def _model_guard(models: _Models, params: list[_Params], holdout, cfg, before: float, report) -> dict:
    """The whole-model guard: if the tuned network's held-out output loss is above the untuned one's, every
    unit gets its parameters from before tuning back."""
    after = _output_loss(models, holdout, cfg)
    restored = after > before
    if restored:
        for p in params:
            p.swap(p.snapshot)
        for record in report.values():
            record.update(loss_after=record["loss_before"], restored=True)
        logger.info("layerwise tuning: held-out network-output loss (MSE / FP32 mean square) rose %.6g -> %.6g; "
                    "every unit's parameters are restored", before, after)
    else:
        logger.info("layerwise tuning: held-out network-output loss (MSE / FP32 mean square) %.6g -> %.6g",
                    before, after)
    return {"output_loss_before": before, "output_loss_after": before if restored else after, "restored": restored}


def _scores(models: _Models, data) -> list[float]:
    """Per calibration sample, the MSE of the model's (first) output to FP32's, for POT's ranking subset; one
    pass over the data, 25 samples at a time."""
    name, fp_name = _output_names(models.qm)[0], _output_names(models.fp)[0]
    parts: list[torch.Tensor] = []

    def score(rows):
        args, kwargs = _stack(rows, range(len(rows)), models.device)
        q = Capture(models.qm, {name}).capture(flat_inputs(models.qm, args, kwargs))[name]
        fp = Capture(models.fp, {fp_name}, float_model=True).capture(flat_inputs(models.fp, args, kwargs))[fp_name]
        parts.append((q - fp).float().pow(2).reshape(len(rows), -1).mean(1))

    chunk = []
    for row in _stream(data):
        chunk.append(row)
        if len(chunk) == 25:
            score(chunk)
            chunk = []
    if chunk:
        score(chunk)
    return torch.cat(parts).tolist() if parts else []  # one host read, not one per chunk


def _ranking_pool(scores: list[float], size: int) -> list[int]:
    """POT's ranking subset: the ``size`` samples whose model outputs differ most (MSE) from FP32."""
    return sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[:size])


def _leaf_nodes(obj):
    if isinstance(obj, fx.Node):
        yield obj.name
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _leaf_nodes(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _leaf_nodes(o)


def _write_back(qm: fx.GraphModule, plan) -> None:
    """Ranges frozen into buffers, tensors no longer trainable, ``torchpqt_fq_params`` updated."""
    for mod in qm.modules():
        if isinstance(mod, FakeQuantize):
            mod.freeze()
    for p in qm.parameters():
        p.requires_grad_(False)
    params = getattr(qm, "torchpqt_fq_params", None)
    if params is not None:
        for point in getattr(plan, "points", ()):
            fq = getattr(qm, point.module_name, None)
            if isinstance(fq, FakeQuantize) and point.name in params:
                old = params[point.name]
                values = [getattr(fq, n).detach().cpu().double().numpy().reshape(np.shape(getattr(old, n)))
                          for n in ("input_low", "input_high", "output_low", "output_high")]
                params[point.name] = FQParams(fq.levels, *values)
    drop_unused_constants(qm)


def tune(qm: fx.GraphModule, plan, data, cfg) -> fx.GraphModule:
    """Layerwise tuning of the converted model ``qm`` (in place) on the calibration ``data``; ``cfg`` is
    the :class:`~torchpqt.config.LayerwiseTuningConfig` plus the run's ``seed`` (see the module doc)."""
    tcfg, seed = cfg.layerwise_tuning, cfg.seed
    if data is None:
        raise TorchPQTError("layerwise tuning needs the calibration data again: call "
                            "torchpqt.convert(prepared, calibration_data) or torchpqt.quantize()")
    device = model_device(qm)
    units = find_units(qm)
    if not units:
        logger.info("layerwise tuning: nothing to tune")
        return qm
    models = _Models(qm, plan, {}, device)
    missing = {n for u in units for n in (u.in_node, u.out_node)} - models.fp_names()
    if missing and not models.fp_is_q:
        models.fp, models.fp_is_q = qm, True
        logger.warning("layerwise tuning: the captured model lacks %s; the reference is the converted model "
                       "with FakeQuantize bypassed", sorted(missing)[:3])
    # Memory: the data is read a pass at a time; only the pool's and the held-out samples' model inputs are
    # kept (the user's samples, at most calibration_indices_pool + tuning_guard_samples of them), and each
    # step computes one batch of activations from them.
    ranking = tcfg.use_ranking_subset
    scores = _scores(models, data) if ranking else None
    n = len(scores) if ranking else _count(data)
    if not n:
        logger.info("layerwise tuning: nothing to tune")
        return qm
    rng = random.Random(seed)
    torch.manual_seed(seed)
    pool, holdout = _split(n, tcfg, rng)
    if ranking and n > tcfg.calibration_indices_pool:
        pool = _ranking_pool(scores, tcfg.calibration_indices_pool)
        holdout = [i for i in holdout if i not in set(pool)] or holdout
    models.rows = _keep(data, [*pool, *holdout])
    seen: set[str] = set()
    params = []
    for u in units:
        make_trainable(qm, u)
        owns = u.input_fq is not None and u.input_fq not in seen
        if owns:
            seen.add(u.input_fq)
        for name in (u.input_fq if owns else None, u.weight_fq):
            if name is not None:
                qm.get_submodule(name).train_ranges(True, train_min=tcfg.asymmetric)
        params.append(_Params(qm, u, owns))
    qm.graph.lint()
    qm.recompile()
    batch = min(tcfg.batch_size, len(pool))
    steps = max(1, tcfg.num_samples_for_tuning // batch)
    sequential = tcfg.tuning_mode == "sequential"
    logger.info("layerwise tuning (%s): %d units, %d steps of %d samples%s", tcfg.tuning_mode, len(units),
                steps, batch, " each" if sequential else "")
    report: dict[str, dict] = {}
    model_guard = bool(holdout) and tcfg.tuning_guard in ("model", "both")
    output_before = _output_loss(models, holdout, tcfg) if model_guard else None
    disable = not sys.stderr.isatty()
    try:
        with tqdm(total=steps * (len(units) if sequential else 1), desc="layerwise tuning", unit="step",
                  disable=disable) as bar:
            if sequential:
                for u, p in zip(units, params):
                    _loop(models, [u], [p], pool, tcfg, rng, bar)
                    _guard(models, [u], [p], holdout, tcfg, report)
            else:
                _loop(models, units, params, pool, tcfg, rng, bar)
                _guard(models, units, params, holdout, tcfg, report)
        if model_guard:
            qm.torchpqt_tuning_model = _model_guard(models, params, holdout, tcfg, output_before, report)
    finally:
        _write_back(qm, plan)
    if report:
        before = sum(r["loss_before"] for r in report.values())
        after = sum(r["loss_after"] for r in report.values())
        logger.info("layerwise tuning: summed held-out local loss %.6g -> %.6g; %d of %d units restored",
                    before, after, sum(r["restored"] for r in report.values()), len(report))
    qm.torchpqt_tuning = report
    return qm


def run(model: fx.GraphModule, plan, statistics, config, *, data=None) -> fx.GraphModule:
    """The pipeline step (see :mod:`torchpqt.algorithms.base`)."""
    return tune(model, plan, data, config)


ALGORITHM = Algorithm("LayerwiseTuning", enabled=lambda config: config.use_layerwise_tuning,
                      statistic_points=lambda plan, config: (), apply=run, needs_data=True)
