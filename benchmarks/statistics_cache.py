"""Re-quantize from the statistics cache vs a fresh ``torchpqt.quantize()``, on a small CNN.

The cache is written once by a run with the default config; then, for each other config (preset mixed;
7-bit activations with a max aggregator; an ignored scope), a fresh run and a run from the cache, interleaved,
``--repeat`` times; the medians' ratio fresh / cached is the speed-up reported. Also: the first, cache-writing
run against a fresh one (the cost of recording). Each cached result is checked equal to the fresh one.

    python benchmarks/statistics_cache.py [--samples 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import torchpqt
from torchpqt.hardware.cpu_isa import cpu_flags, cpu_isa_name
from torchpqt.manifest import state_dict_hash


class SmallCNN(nn.Module):
    """conv-bn-relu, conv -> pointwise conv (a channel alignment pair: two calibration passes), strided convs,
    linear head; input 1x3x32x32; 60k parameters."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.bn = nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.c2, self.pw = nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 1)
        self.c3 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.c4 = nn.Conv2d(64, 64, 3, stride=2, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = F.relu(self.pw(self.c2(x)))
        x = F.relu(self.c4(F.relu(self.c3(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = SmallCNN().eval()
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(args.samples)]
    base = {"stat_subset_size": args.samples}
    others = {
        "preset mixed": {**base, "preset": "mixed"},
        "7-bit activations, max aggregator": {**base, "activations": {
            "bits": 7, "range_estimator": {"max": {"aggregator": "max"}}}},
        "ignored scope": {**base, "ignored": {"scope": ["c3"]}},
    }
    print(f"# CPU int8 ISA: {cpu_isa_name(cpu_flags())}; torch {torch.__version__}, 1 thread; "
          f"{args.samples} samples, batch 1")

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    with tempfile.TemporaryDirectory() as tmp:
        write_times, fresh_base = [], []
        for i in range(args.repeat):
            path = Path(tmp) / f"w{i}.pt"
            fresh_base.append(timed(lambda: torchpqt.quantize(model, data, base))[0])
            write_times.append(timed(lambda p=path: torchpqt.quantize(model, data, base, statistics_cache=p))[0])
        print(f"writing the cache vs fresh (default config): {statistics.median(write_times):.2f} s vs "
              f"{statistics.median(fresh_base):.2f} s, ratio {statistics.median(write_times) / statistics.median(fresh_base):.2f}")
        cache = Path(tmp) / "w0.pt"
        print(f"cache file: {cache.stat().st_size / 1e6:.2f} MB")
        for name, config in others.items():
            fresh, cached = [], []
            for _ in range(args.repeat):
                t_f, q_f = timed(lambda c=config: torchpqt.quantize(model, data, c))
                t_c, q_c = timed(lambda c=config: torchpqt.quantize(model, data, c, statistics_cache=cache))
                assert state_dict_hash(q_f) == state_dict_hash(q_c), name
                fresh.append(t_f)
                cached.append(t_c)
            f, c = statistics.median(fresh), statistics.median(cached)
            print(f"{name}: fresh {f:.2f} s, from cache {c:.2f} s, speed-up {f / c:.1f}x (results equal)")


if __name__ == "__main__":
    main()
