"""DefaultQuantization step by step on EfficientNet-Lite0 with its real ImageNet weights: the OpenVINO int8 IR
against the FP32 torch model, on real photos (the images that ship with installed packages, as crops and flips;
calibration and evaluation crops disjoint).

Rows: min-max only, + fast bias correction, + channel alignment (POT's default pipeline), the padding fix
extension, BiasCorrection (``use_fast_bias: false``), and the saturation fix ``first_layer`` vs ``all``. Each
model is exported to an IR with int8 weights, compiled on CPU with ``INFERENCE_PRECISION_HINT: f32`` (so only the
int8 kernels differ from FP32) and scored by top-1 agreement with the FP32 model and the SQNR of its logits.
The CPU's int8 kind is printed: without VNNI/AMX, OpenVINO's u8 x s8 convolutions saturate.

The partial pipelines (min-max only, without channel alignment) are not configs POT offers: the script runs
them by choosing the pipeline's steps (``torchpqt.algorithms.pipeline.PIPELINE``).

    python benchmarks/pipeline.py [--calibration 100] [--evaluation 200]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchpqt
from examples._common import image_crops
from examples.efficientnet_lite import efficientnet_lite0
from torchpqt.algorithms import channel_alignment, fast_bias_correction, min_max, pipeline
from torchpqt.hardware.cpu_isa import cpu_flags, int8_saturates

ROWS = [  # (label, pipeline steps or None for POT's, params)
    ("min-max only", (min_max.ALGORITHM,), {}),
    ("+ fast bias correction", (min_max.ALGORITHM, fast_bias_correction.ALGORITHM), {}),
    ("+ channel alignment (POT default)", None, {}),
    ("  + fast_bias_padding_fix", None, {"fast_bias_padding_fix": True}),
    ("BiasCorrection (use_fast_bias: false)", None, {"use_fast_bias": False}),
    ("POT default, saturation_fix: all", None, {"saturation_fix": "all"}),
    ("BiasCorrection, saturation_fix: all", None, {"use_fast_bias": False, "saturation_fix": "all"}),
]


def isa() -> str:
    flags = cpu_flags() or frozenset()
    kind = {True: "AVX2-only (int8 saturates)", False: "VNNI/AMX (no int8 saturation)", None: "unknown"}
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{kind[int8_saturates(flags or None)]}; flags: {' '.join(found) or '-'}"


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()))


def ir_logits(qmodel, example, x: torch.Tensor, tmp: Path, name: str) -> np.ndarray:
    import openvino as ov
    from torchpqt.exporters import openvino as ov_export

    xml = tmp / f"{name}.xml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov_export.export(qmodel, example, str(xml), target_device="CPU", check=False)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = [compiled(xb.numpy())[0] for xb in x.split(50)]
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=100)
    parser.add_argument("--evaluation", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = efficientnet_lite0(pretrained=True).eval()
    calibration = image_crops(args.calibration, "calibration")
    evaluation = torch.cat(image_crops(args.evaluation, "evaluation"))
    with torch.no_grad():
        ref = torch.cat([model(xb) for xb in evaluation.split(50)]).numpy()
    print(f"CPU: {isa()}")
    print(f"EfficientNet-Lite0, {args.calibration} calibration / {args.evaluation} evaluation crops; "
          "OpenVINO int8 IR (f32 inference precision) vs FP32 torch")
    print(f"| {'pipeline':<40} | top-1 agreement | logits SQNR (dB) | quantize (s) |")
    print(f"|{'-' * 42}|-----------------|------------------|--------------|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, steps, params) in enumerate(ROWS):
            patch = mock.patch.object(pipeline, "PIPELINE", steps) if steps else contextlib.nullcontext()
            started = time.perf_counter()
            with patch:
                q = torchpqt.quantize(model, calibration, {"stat_subset_size": args.calibration, **params},
                                      progress=False)
            took = time.perf_counter() - started
            got = ir_logits(q, calibration[0], evaluation, Path(tmp), f"m{i}")
            agree = float((got.argmax(1) == ref.argmax(1)).mean())
            print(f"| {label:<40} | {agree:15.3f} | {sqnr(ref, got):16.2f} | {took:12.1f} |", flush=True)


if __name__ == "__main__":
    assert channel_alignment.ALGORITHM in pipeline.PIPELINE
    main()
