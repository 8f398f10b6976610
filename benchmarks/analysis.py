"""Cost of ``torchpqt.analyze()`` (per-FakeQuantize sensitivity) relative to calibration.

For each model, in one process, ``--repeat`` interleaved runs of:
  * ``quantize``: ``torchpqt.quantize()`` (capture + calibration + convert), and its calibration pass alone
    (``torchpqt.prepare`` then the prepared model over the calibration samples);
  * ``analyze``: ``torchpqt.analyze()`` on the same samples and config; its own phase timings give the
    sensitivity part (3 + 2·N batched passes over the held-out set) apart from the quantization it includes.
Medians are reported, as ratios to the calibration pass measured in the same run.

* ``digits``: the digits CNN of benchmarks/layerwise_tuning.py (trained for a few seconds on scikit-learn's
  8x8 digits; calibration: 300 training images).
* ``bert``: the 4-layer BERT (width 256, sequence 64, random weights) of benchmarks/calibration.py, with
  POT's BERT recipe (performance preset, model_type transformer); calibration: 300 random token sequences.

    python benchmarks/analysis.py [--models digits bert] [--samples 300] [--eval-samples 32] [--repeat 3]
        [--report-dir DIR] [--verify]

``--verify`` (digits only, needs OpenVINO): quantize with and without the suggested ignored scope
(``max_layers=1``), export both to OpenVINO IRs (``INFERENCE_PRECISION_HINT: f32``) and compare them with the FP32
model on the 297 test images the CNN never saw: top-1 accuracy on the labels and SQNR of the logits.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import calibration as calib_bench  # benchmarks/calibration.py: the BERT model and data
import layerwise_tuning as tuning_bench  # benchmarks/layerwise_tuning.py: the digits CNN

import torchpqt


def build(name: str, samples: int):
    """(model, calibration samples with batch 1, config)."""
    if name == "digits":
        model, cal, *_ = tuning_bench.digits(samples, 10)
        return model, cal[:samples], {"preset": "performance", "stat_subset_size": samples}
    model, data = calib_bench.build("bert")
    return model, data[:samples], {"preset": "performance", "model_type": "transformer",
                                   "stat_subset_size": samples}


def _call(model, item):
    return model(**item) if isinstance(item, dict) else model(item)


def calibration_pass(model, data, config) -> float:
    prepared = torchpqt.prepare(model, data[0], config)
    t0 = time.perf_counter()
    with torch.no_grad():
        for item in data:
            _call(prepared, item)
    return time.perf_counter() - t0


def verify_digits(samples: int) -> dict:
    """The suggested ignored scope of the digits CNN, checked on OpenVINO IRs against the held-out labels."""
    import tempfile

    from sklearn.datasets import load_digits

    model, cal, *_ = tuning_bench.digits(samples, 10)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[1500:, None] / 16.0
    y = d.target[1500:]
    config = {"preset": "performance", "stat_subset_size": samples}
    analysis = torchpqt.analyze(model, cal, config, progress=False)
    suggested = analysis.suggested_config(max_layers=1)
    with torch.no_grad():
        ref = model(x).numpy()
    out = {"suggested_ignored": suggested["params"]["ignored"], "fp32_accuracy": float((ref.argmax(1) == y).mean())}
    for label, cfg in (("plain", config), ("ignored", suggested)):
        q = torchpqt.quantize(model, cal, cfg, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            logits = tuning_bench._ir_logits(q, x[:2], x, Path(tmp))
        out[label] = {"ir_accuracy": float((logits.argmax(1) == y).mean()),
                      "ir_top1_agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
                      "ir_sqnr_db": tuning_bench._sqnr(ref, logits)}
    print(f"verify digits: ignoring {out['suggested_ignored']}: IR accuracy {out['plain']['ir_accuracy']:.3f} -> "
          f"{out['ignored']['ir_accuracy']:.3f} (FP32 {out['fp32_accuracy']:.3f}), IR logits SQNR "
          f"{out['plain']['ir_sqnr_db']:.2f} -> {out['ignored']['ir_sqnr_db']:.2f} dB (analysis estimate "
          f"{analysis.estimate(out['suggested_ignored']['scope']):.2f} dB on its 32 held-out samples)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits", "bert"], choices=["digits", "bert"])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--eval-samples", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--report-dir", help="also write each model's report.html/json into DIR/<model>")
    ap.add_argument("--verify", action="store_true", help="check the digits suggestion on OpenVINO IRs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    print(f"# CPU ISA: {calib_bench_isa()}; torch {torch.__version__}, 1 thread", flush=True)
    out = {}
    for name in args.models:
        model, data, config = build(name, args.samples)
        runs = {"calibration": [], "quantize": [], "analyze": [], "analysis_phase": []}
        last = None
        for _ in range(args.repeat):  # interleaved
            runs["calibration"].append(calibration_pass(model, data, config))
            t0 = time.perf_counter()
            torchpqt.quantize(model, data, config, progress=False)
            runs["quantize"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            last = torchpqt.analyze(model, data, config, progress=False, eval_samples=args.eval_samples)
            runs["analyze"].append(time.perf_counter() - t0)
            runs["analysis_phase"].append(last.timings_s["analysis"])
        med = {k: statistics.median(v) for k, v in runs.items()}
        row = {"fake_quantize": len(last.ranking), "eval_samples": last.eval_samples, "passes": last.passes,
               "seconds": med, "analysis_phase/calibration": med["analysis_phase"] / med["calibration"],
               "analyze/calibration": med["analyze"] / med["calibration"],
               "analyze/quantize": med["analyze"] / med["quantize"],
               "quantized_sqnr_db": last.quantized, "most_sensitive": last.ranking[0].fake_quantize,
               "suggested_ignored": last.suggest_ignored_scope(max_layers=1)}
        out[name] = row
        print(f"{name}: {row['fake_quantize']} FakeQuantize, {row['passes']} passes over {row['eval_samples']} "
              f"held-out samples; calibration {med['calibration']:.2f}s, quantize {med['quantize']:.2f}s, "
              f"analyze {med['analyze']:.2f}s (sensitivity part {med['analysis_phase']:.2f}s = "
              f"{row['analysis_phase/calibration']:.2f}x calibration; whole analyze "
              f"{row['analyze/calibration']:.2f}x calibration, {row['analyze/quantize']:.2f}x quantize)", flush=True)
        if args.report_dir:
            last.write_report(Path(args.report_dir) / name)
    if args.verify:
        out["verify_digits"] = verify_digits(args.samples)
    print(json.dumps({"samples": args.samples, **out}, indent=1, default=str))


def calib_bench_isa() -> str:
    return tuning_bench._isa()


if __name__ == "__main__":
    main()
