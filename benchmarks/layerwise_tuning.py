"""Layerwise tuning: what it buys on OpenVINO int8 IRs, and what it costs.

For each model and weight width (8 and 4 bits), three quantizations from the same calibration samples:
no tuning, POT's simultaneous tuning and torchpqt's sequential tuning. Each result is exported to an
OpenVINO IR (compiled with ``INFERENCE_PRECISION_HINT: f32``) and run on held-out samples; we report
the IR's top-1 agreement with the FP32 torch model and the SQNR of its logits against FP32, and the time
each ``quantize()`` took relative to the one without tuning ("calibration").

* ``digits``: a small CNN trained for a few seconds on scikit-learn's 8x8 digits (calibration: 300
  training images; evaluation: the 297 images it never saw).
* ``effnet``: EfficientNet-Lite0 with its real ImageNet weights, on crops of the photos the installed
  packages ship (examples/efficientnet_lite.py; disjoint calibration and evaluation crops).

    python benchmarks/layerwise_tuning.py [--models digits effnet] [--calibration 300] [--evaluation 100]
        [--tuning-samples 5000] [--batch-size 25] [--lr-scale 1] [--bits 8 4] [--modes simultaneous sequential]
        [--guard both] [--threads N]

``--tuning-samples`` is POT's ``num_samples_for_tuning`` (steps = it / batch_size, per layer in sequential
mode); ``--lr-scale`` multiplies all of POT's learning rates.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchpqt

POT_LRS = {"weights_lr": 1e-5, "bias_lr": 1e-4, "weight_fq.scale_lr": 1e-6, "weight_fq.min_lr": 1e-6,
           "input_fq.scale_lr": 1e-6, "input_fq.min_lr": 1e-6, "scale_lr": 1e-6, "min_lr": 1e-6}


class DigitsCNN(nn.Module):
    """conv-bn-relu, conv-relu, maxpool, depthwise residual, global pooling, linear (8x8 digits)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.dw(x)) + x
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def digits(n_cal: int, n_eval: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    train, test = slice(0, 1500), slice(1500, None)
    torch.manual_seed(0)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        for i in range(0, 1500, 50):
            opt.zero_grad()
            F.cross_entropy(model(x[train][i:i + 50]), y[train][i:i + 50]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    cal = [x[i:i + 1] for i in range(min(n_cal, 1500))]
    ev = x[test][:n_eval]
    return model, cal, ev, f"FP32 test accuracy {accuracy:.3f}"


def effnet(n_cal: int, n_eval: int):
    from examples._common import image_crops
    from examples.efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(pretrained=True), image_crops(n_cal, "calibration"), \
        torch.cat(image_crops(n_eval, "evaluation")), "real ImageNet weights"


def _ir_logits(q, example, evaluation, folder: Path):
    import openvino as ov
    from torchpqt.exporters import openvino as ov_export

    report = ov_export.export(q, example, folder / "model.xml", check=False)
    compiled = ov.Core().compile_model(str(report.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.concatenate([compiled([evaluation[i:i + 1].numpy()])[0] for i in range(len(evaluation))])


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).mean() / max(((out - ref) ** 2).mean(), 1e-30)))


def run(name, build, args) -> list[dict]:
    model, cal, evaluation, note = build(args.calibration, args.evaluation)
    with torch.no_grad():
        ref = model(evaluation).numpy()
    print(f"# {name}: {len(cal)} calibration samples, {len(evaluation)} held-out; {note}", flush=True)
    rows = []
    lrs = {k: v * args.lr_scale for k, v in POT_LRS.items()}
    for bits in args.bits:
        base = {"stat_subset_size": len(cal), **({"weights": {"bits": 4}} if bits == 4 else {})}
        calibration_time = None
        for mode in ("none", *args.modes):
            params = dict(base)
            if mode != "none":
                params.update(use_layerwise_tuning=True, tuning_mode=mode,
                              num_samples_for_tuning=args.tuning_samples, batch_size=args.batch_size,
                              tuning_guard=False if args.guard == "false" else args.guard, **lrs)
            t0 = time.perf_counter()
            q = torchpqt.quantize(model, cal, params, progress=False)
            seconds = time.perf_counter() - t0
            calibration_time = calibration_time or seconds
            with tempfile.TemporaryDirectory() as tmp:
                out = _ir_logits(q, evaluation[:2], evaluation, Path(tmp))
            tuning = getattr(q, "torchpqt_tuning", {})
            verdict = getattr(q, "torchpqt_tuning_model", None)
            row = {"model": name, "weights": bits, "tuning": mode,
                   "top1_agreement": float((out.argmax(1) == ref.argmax(1)).mean()), "sqnr_db": _sqnr(ref, out),
                   "time_x_calibration": seconds / calibration_time, "seconds": seconds,
                   "layers_restored": sum(v["restored"] for v in tuning.values()), "units": len(tuning),
                   "model_guard": None if verdict is None else ("restored" if verdict["restored"] else "kept"),
                   "output_loss": None if verdict is None else [verdict["output_loss_before"],
                                                                 verdict["output_loss_after"]]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _isa() -> str:
    """The int8-relevant instruction sets of this CPU (Linux), e.g. ``avx2 avx512_vnni amx_int8``."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return " ".join(f for f in wanted if f in flags.split()) or "no AVX2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "effnet"], choices=["digits", "effnet"])
    parser.add_argument("--calibration", type=int, default=300)
    parser.add_argument("--evaluation", type=int, default=100)
    parser.add_argument("--tuning-samples", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 4], help="weight widths")
    parser.add_argument("--modes", nargs="+", default=["simultaneous", "sequential"],
                        choices=["simultaneous", "sequential"])
    parser.add_argument("--lr-scale", type=float, default=1.0)
    parser.add_argument("--guard", default="both", choices=["layer", "model", "both", "false"],
                        help="tuning_guard")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    import openvino as ov

    isa = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    print(f"# OpenVINO {ov.get_version()}, CPU capabilities: {' '.join(isa)}, ISA: {_isa()}; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    rows = []
    for name in args.models:
        rows += run(name, {"digits": digits, "effnet": effnet}[name], args)
    print("\n| model | weights | tuning | top-1 agreement | SQNR dB | time / calibration | layers restored | "
          "model guard |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['weights']}-bit | {r['tuning']} | {r['top1_agreement']:.3f} | "
              f"{r['sqnr_db']:.2f} | {r['time_x_calibration']:.1f}x | {r['layers_restored']}/{r['units']} | "
              f"{r['model_guard'] or '–'} |")


if __name__ == "__main__":
    main()
