"""Quickstart: quantize EfficientNet-Lite0 (real ImageNet weights) on real photos, export an int8 OpenVINO IR.

    pip install -e '.[openvino,examples]'
    python examples/quickstart.py [--quick] [--output-dir results/quickstart]

The short form of examples/classification.py: prints how often the int8 IR picks the same class as the
FP32 model on photos it was not calibrated on, and how much faster it runs on this CPU.
"""

import time
from pathlib import Path

import _common as common  # examples/_common.py: shipped photos, OpenVINO helpers
import torch
from efficientnet_lite import efficientnet_lite0
from torchpqt.exporters import openvino as ov_export

import torchpqt

args = common.example_args(__doc__, "quickstart")   # --quick (16 photos), --output-dir
common.quiet_logging()                                # torchpqt's own INFO lines only
out, n = Path(args.output_dir), 16 if args.quick else 64

model = efficientnet_lite0(pretrained=True)          # FP32, eval mode
calibration = common.image_crops(n, "calibration")   # crops of the photos scikit-learn and matplotlib ship
evaluation = common.image_crops(n, "evaluation")     # other crops

# POT's DefaultQuantization, performance preset; use_fast_bias False picks BiasCorrection over the default
# fast one (as classification.py does): 54 of the 64 crops agree instead of 47, quantizing in about the same time
t0 = time.perf_counter()
qmodel = torchpqt.quantize(model, calibration, {"name": "DefaultQuantization",
                                                "params": {"preset": "performance", "stat_subset_size": n,
                                                           "use_fast_bias": False}})
print(f"quantized in {time.perf_counter() - t0:.0f} s")

common.check_summary(ov_export.export(qmodel, calibration[0], out / "efficientnet_lite0_int8.xml"))
common.export_fp32_ir(model, calibration[0], out / "efficientnet_lite0_fp32.xml")
int8 = common.compile_ir(out / "efficientnet_lite0_int8.xml")
fp32 = common.compile_ir(out / "efficientnet_lite0_fp32.xml")

with torch.no_grad():
    same = sum(int(model(x).argmax() == common.run_ir(int8, x)[0].argmax()) for x in evaluation)
speedup = common.latency_ms(fp32, evaluation[0]) / common.latency_ms(int8, evaluation[0])
print(f"int8 IR agrees with FP32 on {same}/{len(evaluation)} photos (top-1); "
      f"{speedup:.1f}x faster than the FP32 IR on this CPU ({common.cpu_isa()})")
