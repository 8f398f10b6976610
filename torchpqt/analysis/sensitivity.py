"""Per-FakeQuantize sensitivity: which quantizer hurts the model output, and what to put in ``ignored.scope``.

The model is quantized once (capture, calibration, convert: the calibration statistics are computed once and
reused). Then, on a small held-out set (default: the first ``eval_samples`` calibration samples), the
converted model is run with its FakeQuantize modules switched on and off (:attr:`FakeQuantize.enabled`):

* ``single``: only that FakeQuantize on, every other off: the damage it does alone, against the converted
  model with every FakeQuantize off (so what the other algorithms changed, e.g. bias correction's biases,
  common to every row, does not mask a FakeQuantize's own noise);
* ``leave_one_out``: every FakeQuantize on except that one, against the FP32 model: what the fully quantized
  model gains without it;
* ``local_sqnr_db``: the FakeQuantize's own output against its input (bypassed), in the fully quantized model.

The figures are output SQNR in dB (over all float outputs together) or, with ``metric``, the user's
``metric(outputs_reference, outputs_q) -> float`` (higher is better, e.g. accuracy on the held-out labels).
3 + 2·N batched passes over the held-out set for N FakeQuantize modules (FP32, all off, all on, then N each).

A row maps to ``ignored.scope`` as POT's ignored scope works: an ignored op loses every FakeQuantize on its
inputs, its weights' and its activations' alike. So a row's ``scopes`` are the ops it feeds (one op for a
weight FakeQuantize or most input ones; an activation shared by several ops feeds them all), and excluding
the row means ignoring all of them: a weight row and the input row of the same layer give the same entry.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree
from tqdm.auto import tqdm

from torchpqt._once import call_scope
from torchpqt.calibration import CalibrationData, model_device, to_device
from torchpqt.config import DefaultQuantizationConfig
from torchpqt.errors import ConfigError, TorchPQTError
from torchpqt.quant.fake_quantize import FakeQuantize

__all__ = ["Analysis", "SensitivityRow", "analyze", "fake_quantize_enabled", "sqnr_db"]

logger = logging.getLogger("torchpqt")

_HIST_VALUES = 200_000  # activation values kept per FakeQuantize for the report's range plots


def sqnr_db(reference: Sequence[torch.Tensor] | torch.Tensor, test: Sequence[torch.Tensor] | torch.Tensor
            ) -> float:
    """``10·log10(Σ reference² / Σ (reference - test)²)`` over all the tensors together (float64 sums);
    ``inf`` when they are equal, ``-inf`` for a zero reference with a nonzero error."""
    refs = [reference] if isinstance(reference, torch.Tensor) else list(reference)
    tests = [test] if isinstance(test, torch.Tensor) else list(test)
    signal = sum(float(r.double().pow(2).sum()) for r in refs)
    noise = sum(float((r.double() - t.double()).pow(2).sum()) for r, t in zip(refs, tests))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _fake_quantizers(model: nn.Module) -> dict[str, FakeQuantize]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantize)}


@contextlib.contextmanager
def fake_quantize_enabled(model: nn.Module, enabled: Iterable[str] | None = None) -> Iterator[None]:
    """Inside the block only the FakeQuantize modules named in ``enabled`` (module names, as
    ``model.named_modules()`` gives them) compute; the others pass their input through
    (:meth:`FakeQuantize.bypass`). ``None`` enables all. Every module's switch is restored on exit.

    Raises:
        TorchPQTError: a name is not a FakeQuantize module of ``model``.
    """
    fqs = _fake_quantizers(model)
    wanted = set(fqs) if enabled is None else set(enabled)
    unknown = sorted(wanted - set(fqs))
    if unknown:
        raise TorchPQTError(f"fake_quantize_enabled: {unknown[:3]} are not FakeQuantize modules of the model; "
                            f"its FakeQuantize modules are {sorted(fqs)[:5]}...")
    before = {n: m.enabled for n, m in fqs.items()}
    try:
        for n, m in fqs.items():
            m.enabled = n in wanted
        yield
    finally:
        for n, m in fqs.items():
            m.enabled = before[n]


@dataclass(frozen=True)
class SensitivityRow:
    """One FakeQuantize of the converted model and how much it costs.

    Attributes:
        fake_quantize: its name as ``torchpqt.plan()`` prints it (``conv2/fq_input_0``).
        module: its submodule name in the converted model (``conv2__fq_input_0``).
        scope: the op scope its name starts with, as ``plan()`` prints it.
        scopes: every op it feeds: what ``ignored.scope`` must hold to remove it.
        group: ``weights`` or ``activations``.
        levels, mode, granularity: its grid.
        single: the metric with only this FakeQuantize enabled, against every FakeQuantize off (SQNR in dB
            unless a metric was given).
        leave_one_out: the metric with every FakeQuantize enabled except this one, against FP32.
        local_sqnr_db: its output against its input, in the fully quantized model.
        input_low, input_high: its range (the smallest low and the largest high when per-channel).
    """

    fake_quantize: str
    module: str
    scope: str
    scopes: tuple[str, ...]
    group: str
    levels: int
    mode: str
    granularity: str
    single: float
    leave_one_out: float
    local_sqnr_db: float
    input_low: float
    input_high: float
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"fake_quantize": self.fake_quantize, "module": self.module, "scope": self.scope,
                "scopes": list(self.scopes), "group": self.group, "levels": self.levels, "mode": self.mode,
                "granularity": self.granularity, "rule": self.rule, "single": _finite(self.single),
                "leave_one_out": _finite(self.leave_one_out), "local_sqnr_db": _finite(self.local_sqnr_db),
                "input_low": self.input_low, "input_high": self.input_high}


def _finite(value: float) -> float | str:
    """JSON has no infinity: ``"inf"`` / ``"-inf"`` / ``"nan"`` as strings, numbers otherwise."""
    return value if math.isfinite(value) else str(value)


@dataclass
class Analysis:
    """What :func:`analyze` measured; ``ranking`` is most sensitive first.

    Attributes:
        ranking: one :class:`SensitivityRow` per FakeQuantize, sorted by ``single`` ascending (the one that
            hurts most alone first), ties by ``leave_one_out`` descending.
        metric_name: ``"sqnr_db"`` or the user metric's name.
        fp32_baseline: the metric of the converted model with every FakeQuantize off (what the algorithms
            other than quantization change, e.g. bias correction), against FP32.
        quantized: the metric of the fully quantized model.
        qmodel: the converted model (every FakeQuantize enabled), as :func:`torchpqt.quantize` returns it.
        config: the config used.
        eval_samples: how many held-out samples the figures are computed on.
        timings_s: seconds per phase (``quantize``: capture, calibration and convert; ``analysis``; ``total``).
        passes: batched forward passes the analysis ran over the held-out set.
        histograms: FakeQuantize module name -> a 1-D sample of its FP32 input (activations only), for the
            report's range plots.
    """

    ranking: list[SensitivityRow]
    metric_name: str
    fp32_baseline: float
    quantized: float
    qmodel: nn.Module
    config: DefaultQuantizationConfig
    eval_samples: int
    timings_s: dict[str, float]
    passes: int
    histograms: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    versions: dict[str, str] = field(default_factory=dict)
    _evaluate: Callable[[set[str]], float] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ ignored scope
    def removed_by(self, scopes: Iterable[str]) -> list[SensitivityRow]:
        """The rows ignoring ``scopes`` removes: those whose every consumer op is among them."""
        chosen = set(scopes)
        return [r for r in self.ranking if r.scopes and set(r.scopes) <= chosen]

    def estimate(self, scopes: Iterable[str]) -> float:
        """The metric with the FakeQuantize modules that ignoring ``scopes`` removes switched off (one pass
        over the held-out set). An estimate: a real re-quantization also recomputes what depends on the
        ignored ops (bias correction, unified scales)."""
        if self._evaluate is None:
            raise TorchPQTError("estimate() needs the analysis of this session (a loaded report cannot run)")
        off = {r.module for r in self.removed_by(scopes)}
        return self._evaluate({r.module for r in self.ranking} - off)

    def suggested_scopes(self, max_layers: int | None = None, target: float | None = None) -> list[str]:
        """The new ``ignored.scope`` entries (ops), in ranking order; see :meth:`suggest_ignored_scope`."""
        if max_layers is None and target is None:
            max_layers = 1
        if max_layers is not None and (isinstance(max_layers, bool) or not isinstance(max_layers, int)
                                       or max_layers < 1):
            raise ConfigError(f"suggest_ignored_scope: max_layers must be an integer >= 1, got {max_layers!r}")
        limit = max_layers if max_layers is not None else len(self.ranking) * 4
        chosen: list[str] = []
        if target is not None and self.quantized >= target:
            return chosen
        for row in self.ranking:
            new = [s for s in row.scopes if s not in chosen]
            if not new or len(chosen) + len(new) > limit:
                continue
            chosen += new
            if target is not None and self.estimate(chosen) >= target:
                break
        return chosen

    def suggest_ignored_scope(self, max_layers: int | None = None, target: float | None = None
                              ) -> dict[str, Any]:
        """An ``ignored`` section for the config, the current one plus the most sensitive layers.

        Args:
            max_layers: at most this many new ``ignored.scope`` entries (ops), taken in ranking order (a row
                feeding several ops brings all of them, or is passed over when they do not fit).
            target: instead (or as well), stop at the first prefix of the ranking whose :meth:`estimate`
                reaches this metric value (dB for SQNR). Neither: ``max_layers=1``.

        Returns:
            ``{"scope": [...], ...}``: the config's ``ignored`` section with the new scopes appended, in the
            form ``params["ignored"]`` takes (names as ``torchpqt.plan()`` prints them).
        """
        section = self.config.ignored.to_dict()
        scopes = list(section.get("scope", []))
        scopes += [s for s in self.suggested_scopes(max_layers, target) if s not in scopes]
        section["scope"] = scopes
        return section

    def suggested_config(self, max_layers: int | None = None, target: float | None = None) -> dict[str, Any]:
        """The config as ``{"name": "DefaultQuantization", "params": {...}}`` with the suggested ignored scope."""
        params = self.config.to_dict()
        params["ignored"] = self.suggest_ignored_scope(max_layers, target)
        return {"name": "DefaultQuantization", "params": params}

    # ------------------------------------------------------------------ output
    def summary(self) -> str:
        unit = " dB" if self.metric_name == "sqnr_db" else ""
        lines = [f"{'FakeQuantize':<44} {'scopes':<28} {'single':>9} {'leave-1-out':>11} {'local dB':>9}"]
        for r in self.ranking:
            lines.append(f"{r.fake_quantize:<44} {','.join(r.scopes):<28} {r.single:>9.2f} "
                         f"{r.leave_one_out:>11.2f} {r.local_sqnr_db:>9.2f}")
        lines.append(f"all quantized: {self.quantized:.2f}{unit}; all FakeQuantize off: {self.fp32_baseline:.2f}"
                     f"{unit} ({self.metric_name}, {self.eval_samples} held-out samples)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """What report.json holds of the analysis."""
        return {"metric": self.metric_name, "eval_samples": self.eval_samples, "passes": self.passes,
                "quantized": _finite(self.quantized), "fp32_baseline": _finite(self.fp32_baseline),
                "ranking": [r.to_dict() for r in self.ranking],
                "suggested_ignored": self.suggest_ignored_scope(max_layers=1) if self.ranking else {},
                "timings_s": dict(self.timings_s), "versions": dict(self.versions)}

    def write_report(self, directory, *, export_report=None, histogram_layers: int = 6, plots: bool = True) -> tuple:
        """Write ``report.html`` and ``report.json`` into ``directory``; returns their paths (see
        :func:`torchpqt.analysis.report.write_report`: ``export_report`` adds the export check's numbers,
        ``plots=False`` needs no matplotlib)."""
        from torchpqt.analysis.report import write_report

        return write_report(self, directory, export_report=export_report, histogram_layers=histogram_layers,
                            plots=plots)


# ---------------------------------------------------------------------------------------------- evaluation
def _float_leaves(out: Any) -> list[torch.Tensor]:
    if hasattr(out, "to_tuple") and not isinstance(out, torch.Tensor):  # transformers' ModelOutput
        out = out.to_tuple()
    return [x.detach() for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor) and x.is_floating_point()]


def _join(outputs: list[Any]) -> Any:
    """The outputs of several batches as one, every tensor leaf concatenated along dim 0."""
    if len(outputs) == 1:
        return outputs[0]
    if hasattr(outputs[0], "to_tuple") and not isinstance(outputs[0], torch.Tensor):
        outputs = [o.to_tuple() for o in outputs]
    flat = [pytree.tree_flatten(o) for o in outputs]
    leaves = [torch.cat([f[0][i] for f in flat]) if isinstance(leaf, torch.Tensor) and leaf.dim() > 0 else leaf
              for i, leaf in enumerate(flat[0][0])]
    return pytree.tree_unflatten(leaves, flat[0][1])


class _Partial(fx.Interpreter):
    """Runs a GraphModule node by node; with ``recompute`` set, every other node takes its value from
    ``cache`` (the FakeQuantize switches changed nothing upstream of them), and with ``record`` it keeps the
    values of ``frontier`` nodes there."""

    def __init__(self, gm, recompute=None, cache=None, record=None, frontier=frozenset()):
        super().__init__(gm, garbage_collect_values=True)
        self.recompute, self.cache, self.record, self.frontier = recompute, cache, record, frontier

    def run_node(self, n):
        if self.recompute is not None and n not in self.recompute and n.op not in ("placeholder", "output"):
            return self.cache.get(n)
        value = super().run_node(n)
        if self.record is not None and n in self.frontier:
            self.record[n] = value
        return value


class _Runner:
    """The converted model's forward with FakeQuantize switches, recomputing after one switch changes only
    the nodes downstream of that FakeQuantize (the rest comes from a recorded run with the same switches
    upstream). Falls back to plain forwards when the inputs cannot be bound to the graph's placeholders."""

    def __init__(self, qmodel: fx.GraphModule, names: Sequence[str]):
        self.qmodel = qmodel
        self.partial = isinstance(qmodel, fx.GraphModule)
        self.downstream: dict[str, set] = {}
        frontier: set = set()
        if self.partial:
            output = next(n for n in qmodel.graph.nodes if n.op == "output")
            for name in names:
                down, stack = {output}, [n for n in qmodel.graph.nodes if n.op == "call_module" and n.target == name]
                while stack:
                    node = stack.pop()
                    if node not in down:
                        down.add(node)
                        stack += node.users
                self.downstream[name] = down
                frontier |= {a for node in down for a in node.all_input_nodes if a not in down}
        self.frontier = frozenset(frontier)
        try:
            self.signature = inspect.signature(qmodel.forward)
        except (TypeError, ValueError):
            self.partial = False

    def _flat(self, args, kwargs):
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:
            return None
        return None if bound.kwargs else bound.args

    def run(self, batch, enabled: set[str], *, record: dict | None = None, changed: str | None = None,
            cache: dict | None = None):
        """The output with ``enabled`` FakeQuantize on; ``record``: keep the frontier values; ``changed``
        with ``cache``: only FakeQuantize ``changed`` differs from the run recorded in ``cache``."""
        args, kwargs = batch
        with fake_quantize_enabled(self.qmodel, enabled):
            flat = self._flat(args, kwargs) if self.partial else None
            if flat is None:
                return self.qmodel(*args, **kwargs)
            if changed is not None and cache is not None:
                return _Partial(self.qmodel, self.downstream[changed], cache).run(*flat)
            return _Partial(self.qmodel, record=record, frontier=self.frontier if record is not None else ()).run(*flat)


class _Score:
    """Accumulates the metric of one configuration over the batches: SQNR sums, or the outputs for a user
    metric."""

    def __init__(self, metric):
        self.metric, self.signal, self.noise, self.outputs, self.refs = metric, 0.0, 0.0, [], []

    def add(self, reference, output) -> None:
        if self.metric is not None:
            self.refs.append(reference)
            self.outputs.append(output)
            return
        ref, test = _float_leaves(reference), _float_leaves(output)
        if len(ref) != len(test) or any(a.shape != b.shape for a, b in zip(ref, test)):
            raise TorchPQTError("analyze(): the quantized model's outputs differ in structure from the FP32 model's")
        for r, t in zip(ref, test):
            r = r.double()
            self.signal += float(r.pow(2).sum())
            self.noise += float((r - t.double()).pow(2).sum())

    def value(self) -> float:
        if self.metric is None:
            if self.noise == 0.0:
                return math.inf
            return -math.inf if self.signal == 0.0 else 10.0 * math.log10(self.signal / self.noise)
        value = self.metric(_join(self.refs), _join(self.outputs))
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise TorchPQTError(f"analyze(): metric returned {type(value).__name__}, not a number; return "
                                "a float where higher is better (e.g. accuracy)") from exc


class _Evaluator:
    """Scores a set of enabled FakeQuantize on the held-out batches against the FP32 model (for
    :meth:`Analysis.estimate`)."""

    def __init__(self, runner: _Runner, batches, references: list[Any], metric):
        self.runner, self.batches, self.references, self.metric = runner, batches, references, metric

    def __call__(self, enabled: set[str]) -> float:
        score = _Score(self.metric)
        with torch.no_grad():
            for batch, ref in zip(self.batches, self.references):
                score.add(ref, self.runner.run(batch, enabled))
        return score.value()


class _Taps:
    """Forward hooks on every FakeQuantize: its local SQNR (output vs bypassed input) or a sample of its input."""

    def __init__(self, fqs: dict[str, FakeQuantize], mode: str):
        self.signal = dict.fromkeys(fqs, 0.0)
        self.noise = dict.fromkeys(fqs, 0.0)
        self.values: dict[str, list[torch.Tensor]] = {n: [] for n in fqs}
        self.kept = dict.fromkeys(fqs, 0)
        self.active = False
        self.handles = [m.register_forward_hook(self._hook(n, mode)) for n, m in fqs.items()]

    def _hook(self, name: str, mode: str):
        def hook(module, inputs, output):
            if not self.active:
                return
            x = inputs[0].detach()
            if mode == "local":
                ref = module.bypass(x).double()
                self.signal[name] += float(ref.pow(2).sum())
                self.noise[name] += float((ref - output.detach().double()).pow(2).sum())
            elif self.kept[name] < _HIST_VALUES:
                flat = x.reshape(-1).float()
                stride = max(1, flat.numel() // (_HIST_VALUES // 4))
                part = flat[::stride][: _HIST_VALUES - self.kept[name]].cpu()
                self.values[name].append(part)
                self.kept[name] += part.numel()
        return hook

    def local_sqnr(self, name: str) -> float:
        n, s = self.noise[name], self.signal[name]
        return math.inf if n == 0.0 else (-math.inf if s == 0.0 else 10.0 * math.log10(s / n))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _reference_model(model: nn.Module) -> nn.Module:
    """The FP32 model in eval mode without touching the user's: itself when already in eval mode."""
    if not any(m.training for m in model.modules()):
        return model
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(model).eval()


def _rule(point) -> str:
    parts = []
    for stat in (getattr(point, "stat_min", None), getattr(point, "stat_max", None)):
        if stat is None:
            continue
        text = f"{stat.side}: {stat.type}" + (f" (q={stat.outlier_prob:g})" if stat.outlier_prob is not None else "")
        if stat.aggregator:
            text += f", {stat.aggregator} over samples"
        parts.append(text)
    return "; ".join(parts)


def _versions() -> dict[str, str]:
    import numpy

    import torchpqt

    out = {"torchpqt": torchpqt.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version()}
    try:
        import openvino

        out["openvino"] = openvino.get_version()
    except ImportError:
        pass
    from torchpqt.hardware.cpu_isa import isa_flags

    out["cpu_isa"] = isa_flags()
    return out


def analyze(model: nn.Module, calibration_data: Iterable, config=None, *, transform_fn: Callable[[Any], Any] | None = None,
            metric: Callable[[Any, Any], float] | None = None, example_inputs=None, progress: bool | None = None,
            eval_data: Iterable | None = None, eval_samples: int = 32, eval_batch_size: int = 32,
            target_device: str | None = None, statistics_cache=None) -> Analysis:
    """Quantize ``model`` once and measure how much each FakeQuantize costs (see the module doc).

    Args:
        model: the FP32 model; never modified.
        calibration_data, config, transform_fn, example_inputs, target_device: as :func:`torchpqt.quantize`.
        metric: ``metric(outputs_reference, outputs_q) -> float``, higher is better, replacing output SQNR.
            Each argument is the model output over the whole held-out set (tensor leaves concatenated along
            dim 0, samples in the order of ``eval_data``, by default of ``calibration_data``); the reference
            is the FP32 model's, or for ``single`` the converted model's with every FakeQuantize off.
        progress: tqdm bars (default: only when stderr is a terminal).
        eval_data: the held-out samples (read like ``calibration_data``, with ``transform_fn``); default: the
            first ``eval_samples`` calibration samples (in the config's sampling order).
        eval_samples: how many held-out samples.
        eval_batch_size: samples per evaluation batch.
        statistics_cache: as :func:`torchpqt.quantize` (the analysis itself needs no calibration pass).

    Returns:
        An :class:`Analysis`; its ``qmodel`` is the quantized model with every FakeQuantize enabled.

    Raises:
        ConfigError: ``eval_samples`` / ``eval_batch_size`` below 1.
        TorchPQTError: as :func:`torchpqt.quantize`; the metric does not return a number.
    """
    from torchpqt.api import _config, quantize

    for name, value in (("eval_samples", eval_samples), ("eval_batch_size", eval_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"analyze(): {name} must be an integer >= 1, got {value!r}")
    with call_scope():
        t_start = time.perf_counter()
        cfg = _config(config, target_device)
        qmodel = quantize(model, calibration_data, cfg, example_inputs=example_inputs, transform_fn=transform_fn,
                          progress=progress, statistics_cache=statistics_cache)
        t_converted = time.perf_counter()

        held = CalibrationData(eval_data if eval_data is not None else calibration_data,
                               cfg.replace(stat_subset_size=eval_samples, stat_batch_size=eval_batch_size,
                                           **({"shuffle_data": False} if eval_data is not None else {})),
                               transform_fn)
        device = model_device(qmodel)
        eval_batches = [to_device(tuple(b), device) for b in held.batches()]
        n_eval = sum(int(next(x for x in pytree.tree_leaves(b) if isinstance(x, torch.Tensor)).shape[0])
                     for b in eval_batches)
        fqs = _fake_quantizers(qmodel)
        points = {p.module_name: p for p in qmodel.torchpqt_plan.points}
        disable = (not sys.stderr.isatty()) if progress is None else not progress
        total = (2 * len(fqs) + 3) * len(eval_batches)
        reference = _reference_model(model)
        runner = _Runner(qmodel, list(fqs))
        names, every = list(fqs), set(fqs)
        scores = {key: _Score(metric) for key in ["off", "on", *(("single", n) for n in names),
                                                   *(("loo", n) for n in names)]}
        references = []
        hist_taps, local_taps = _Taps(fqs, "histogram"), _Taps(fqs, "local")
        try:
            with torch.no_grad(), tqdm(total=total, desc="sensitivity", unit="batch", disable=disable) as bar:
                for batch in eval_batches:
                    args, kwargs = batch
                    ref = reference(*args, **kwargs)
                    references.append(ref)
                    off_cache, on_cache = {}, {}
                    hist_taps.active = True
                    off = runner.run(batch, set(), record=off_cache)
                    hist_taps.active = False
                    local_taps.active = True
                    on = runner.run(batch, every, record=on_cache)
                    local_taps.active = False
                    scores["off"].add(ref, off)
                    scores["on"].add(ref, on)
                    bar.update(3)
                    for n in names:
                        scores["single", n].add(off, runner.run(batch, {n}, changed=n, cache=off_cache))
                        bar.update(1)
                    for n in names:
                        scores["loo", n].add(ref, runner.run(batch, every - {n}, changed=n, cache=on_cache))
                        bar.update(1)
                    del off_cache, on_cache, off, on
        finally:
            hist_taps.remove()
            local_taps.remove()
        taps = local_taps
        baseline, quantized = scores["off"].value(), scores["on"].value()
        single = {n: scores["single", n].value() for n in names}
        loo = {n: scores["loo", n].value() for n in names}
        hist = {n: torch.cat(v) for n, v in hist_taps.values.items()
                if v and points.get(n) is not None and points[n].group != "weights"}
        evals = 3 + 2 * len(names)
        ev = _Evaluator(runner, eval_batches, references, metric)
        rows = []
        for n, m in fqs.items():
            p = points.get(n)
            il, ih = m.ranges()[:2]
            rows.append(SensitivityRow(
                fake_quantize=p.name if p else n, module=n,
                scope=p.name.rsplit("/fq_", 1)[0] if p else "", scopes=tuple(getattr(p, "consumer_scopes", ())),
                group=p.group if p else "", levels=int(m.levels), mode=str(p.spec.mode) if p else "",
                granularity=str(p.spec.granularity) if p else "", single=single[n], leave_one_out=loo[n],
                local_sqnr_db=taps.local_sqnr(n), input_low=float(il.min()), input_high=float(ih.max()),
                rule=_rule(p) if p else ""))
        rows.sort(key=lambda r: (_key(r.single), -_key(r.leave_one_out), r.fake_quantize))
        t_end = time.perf_counter()
        timings = {"quantize": t_converted - t_start, "analysis": t_end - t_converted, "total": t_end - t_start}
        name = "sqnr_db" if metric is None else getattr(metric, "__name__", "metric")
        logger.info("sensitivity: %d FakeQuantize on %d held-out samples, %d passes in %.1f s; most sensitive: %s",
                    len(rows), n_eval, evals, timings["analysis"], rows[0].fake_quantize if rows else "none")
        return Analysis(ranking=rows, metric_name=name, fp32_baseline=baseline, quantized=quantized, qmodel=qmodel,
                        config=cfg, eval_samples=n_eval, timings_s=timings, passes=evals, histograms=hist,
                        versions=_versions(), _evaluate=ev)


def _key(value: float) -> float:
    return -math.inf if math.isnan(value) else value
