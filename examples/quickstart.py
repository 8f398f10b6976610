"""Quantize a small CNN with POT's DefaultQuantization semantics and export an int8 OpenVINO IR.

    python examples/quickstart.py [--output-dir results/quickstart]
"""

import argparse
import logging
import sys
from pathlib import Path

import torch

import torchpqt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import small_cnn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", default="results/quickstart")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("torchpqt").setLevel(logging.INFO)

    model = small_cnn()
    g = torch.Generator().manual_seed(0)
    calibration = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(64)]
    config = {"name": "DefaultQuantization", "params": {"preset": "performance", "stat_subset_size": 64}}

    print(torchpqt.plan(model, calibration[0], config))
    qmodel = torchpqt.quantize(model, calibration, config)

    x = torch.randn(8, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref, out = model(x), qmodel(x)
    rel = ((out - ref).norm() / ref.norm()).item()
    print(f"fake-quantized vs FP32: relative L2 error {rel:.4f}")

    try:
        from torchpqt.exporters import openvino as ov_export
    except ImportError:
        print("openvino is not installed (pip install -e '.[openvino]'): skipping the IR export")
        return
    ov_export.export(qmodel, calibration[0], Path(args.output_dir) / "small_cnn.xml")  # logs its report


if __name__ == "__main__":
    main()
