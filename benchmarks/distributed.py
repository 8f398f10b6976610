"""Sharded calibration: what merging the ranks' statistics costs, and 2 ranks against 1 on the same samples.

For each model, ``--samples`` calibration samples at batch 1, one torch thread per process:
  * ``1 rank``: one process, ``torchpqt.quantize(model, samples)`` (a gloo group of one: not sharded);
  * ``2 ranks``: two gloo processes (torch.multiprocessing), each ``quantize(model, its half)``.
Every process is fresh and warmed by one small quantize() first; the wall time is from a barrier before the
call to a barrier after it (process start, imports and the warm-up not counted).
  * ``merge``: the time the ranks spend in ``torchpqt.distributed.all_gather_statistics`` (the gather of the
    reduced statistics and their merge in rank order), against the time of their calibration pass.
Medians of ``--repeat`` interleaved runs; the ratios are what we report. Every 2-rank result is checked equal
to the 1-rank one. Note the cores: two ranks only run faster than one where two cores are free.

    python benchmarks/distributed.py [--samples 128] [--repeat 3] [--models cnn bert] [--config median]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp
from calibration import ConvNet  # the benchmarks' conv net, here at 1.3M parameters

import torchpqt
import torchpqt.distributed as tdist
from torchpqt.hardware.cpu_isa import isa_flags

CONFIGS = {
    "default": {"preset": "performance"},
    "median": {"preset": "performance", "activations": {"range_estimator": {
        "min": {"aggregator": "median"}, "max": {"aggregator": "hl_estimator"}}}},
}


def build(name: str, n: int):
    g = torch.Generator().manual_seed(0)
    if name == "cnn":
        return ConvNet(chans=(3, 48, 96, 192, 384), classes=100).eval(), [torch.randn(1, 3, 64, 64, generator=g) for _ in range(n)]
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=512, max_position_embeddings=64, attn_implementation="eager")
    torch.manual_seed(0)
    model = BertModel(cfg).eval()
    ids = [torch.randint(0, 1000, (1, 32), generator=g) for _ in range(n)]
    return model, [(i, torch.ones_like(i)) for i in ids]


def ranges(q) -> dict:
    return {f"{n}.{a}": getattr(m, a).clone() for n, m in q.named_modules() if isinstance(m, torchpqt.FakeQuantize)
            for a in ("input_low", "input_high", "output_low", "output_high")}


def _rank(rank: int, world: int, init: str, out: str, name: str, n: int, config: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    model, data = build(name, n)
    shard = data[rank * n // world:(rank + 1) * n // world]
    # warm: a fresh process's first capture pays one-time imports and caches (both sides pay them alike)
    torchpqt.quantize(model, data[:2], CONFIGS[config], progress=False, distributed=False)
    timing = {"merge": 0.0, "calibrate": 0.0, "bytes": 0}
    gather, calibrate = tdist.all_gather_statistics, tdist.calibrate_pass

    def timed_gather(store, group=None):
        t0 = time.perf_counter()
        merged = gather(store, group)
        timing["merge"] += time.perf_counter() - t0
        timing["bytes"] += len(pickle.dumps({k: dict(v) for k, v in store.items()}))
        return merged

    def timed_calibrate(*args, **kwargs):
        t0 = time.perf_counter()
        seen = calibrate(*args, **kwargs)
        timing["calibrate"] += time.perf_counter() - t0
        return seen

    tdist.all_gather_statistics, tdist.calibrate_pass = timed_gather, timed_calibrate
    torch.distributed.barrier()
    t0 = time.perf_counter()
    q = torchpqt.quantize(model, shard, CONFIGS[config], progress=False)
    torch.distributed.barrier()
    timing["wall"] = time.perf_counter() - t0
    torch.save({"timing": timing, "ranges": ranges(q)}, os.path.join(out, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


def ranks(world: int, name: str, n: int, config: str) -> tuple[list[dict], dict]:
    """``world`` fresh processes (1: a group of one, i.e. plain single-process quantize())."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(world, os.path.join(tmp, "init"), tmp, name, n, config), nprocs=world, join=True)
        parts = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]
    return [p["timing"] for p in parts], parts[0]["ranges"]


def isa() -> str:
    return isa_flags()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["cnn", "bert"])
    ap.add_argument("--config", choices=list(CONFIGS), default="default")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU ISA: {isa()}; {cores} core(s) available, load average {os.getloadavg()[0]:.1f}; "
          f"torch {torch.__version__}; config {args.config}; {args.samples} samples at batch 1")
    results = {}
    for name in args.models:
        ones, twos = [], []
        for _ in range(args.repeat):  # interleaved
            single, ref = ranks(1, name, args.samples, args.config)
            timings, got = ranks(2, name, args.samples, args.config)
            assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref), "2 ranks != 1"
            ones.append(single[0]["wall"])
            twos.append(timings)
        wall1 = statistics.median(ones)
        wall2 = statistics.median(max(t["wall"] for t in ts) for ts in twos)
        merge = statistics.median(max(t["merge"] for t in ts) for ts in twos)
        calib = statistics.median(max(t["calibrate"] for t in ts) for ts in twos)
        row = {"one_rank_s": wall1, "two_ranks_s": wall2, "two_over_one": wall2 / wall1,
               "merge_s": merge, "calibration_s": calib, "merge_over_calibration": merge / calib,
               "merge_over_quantize": merge / wall2, "statistics_bytes_per_rank": twos[0][0]["bytes"]}
        results[name] = row
        print(f"{name}: 2 ranks / 1 rank wall = {row['two_over_one']:.2f} ({wall2:.2f} s / {wall1:.2f} s); "
              f"merge / calibration pass = {row['merge_over_calibration']:.3f} ({merge * 1e3:.0f} ms / "
              f"{calib:.2f} s), merge / quantize = {row['merge_over_quantize']:.3f}; statistics sent per rank "
              f"{row['statistics_bytes_per_rank'] / 1024:.0f} KiB; results identical: yes")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"isa": isa(), "cores": cores, "results": results}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
