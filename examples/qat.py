"""Quantization-aware training: a digits CNN with 4-bit weights and 8-bit activations, FP32 vs PTQ vs PTQ + QAT,
each measured on its OpenVINO IR.

    python examples/qat.py [--quick] [--output-dir results/qat]

Trains the CNN on sklearn's digits (ships with scikit-learn, nothing downloaded), quantizes it with
``weights: {bits: 4}`` (POT's DefaultQuantization, performance preset), then fine-tunes the converted model for a
few epochs with its weights *and* FakeQuantize ranges trainable (``torchpqt.train_ranges``), saves its
``state_dict``, rebuilds it with ``torchpqt.load`` and exports it. Writes ``metrics.json`` to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import check_summary  # examples/_common.py
from models import DigitsCNN  # examples/models.py
from torch import nn

import torchpqt

CONFIG = {"name": "DefaultQuantization",
          "params": {"preset": "performance", "stat_subset_size": 300, "weights": {"bits": 4}}}


def digits():
    """(x_train, y_train, x_test, y_test): 1400 training digits, the other 397 held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    return x[train], y[train], x[test], y[test]


def fit(model: nn.Module, x, y, epochs: int, lr: float, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * ((len(x) + 63) // 64))
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def ir_logits(xml: Path, x) -> torch.Tensor:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return torch.from_numpy(compiled(x.numpy())[0])


def measure(name: str, model, xml: Path, x, y) -> dict:
    """Accuracy of the torch model and of its IR, and how far the IR's logits are from torch's."""
    with torch.no_grad():
        ref = model(x)
    logits = ir_logits(xml, x)
    return {"torch": (ref.argmax(1) == y).float().mean().item() * 100,
            "ir": (logits.argmax(1) == y).float().mean().item() * 100,
            "ir_vs_torch_max_abs_logit_diff": float((logits - ref).abs().max()),
            "ir_vs_torch_argmax_agreement": (logits.argmax(1) == ref.argmax(1)).float().mean().item() * 100}


def export_fp32(model, example, xml: Path) -> None:
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's tracing notes on a plain eval model
        ov_model = ov.convert_model(model, example_input=example)
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)


def cpu_isa() -> str:
    """The vector ISA that decides OpenVINO's int8 kernels (AVX2-only CPUs saturate u8 x s8 products)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return platform.machine()
    for isa in ("amx_int8", "avx512_vnni", "avx512f", "avx2"):
        if isa in flags:
            return isa
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer FP32 and QAT epochs (a smoke run)")
    ap.add_argument("--output-dir", default="results/qat")
    ap.add_argument("--qat-epochs", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from torchpqt.exporters import openvino as ov_export

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits()
    model = fit(DigitsCNN(), x_train, y_train, epochs=4 if args.quick else 15, lr=3e-3)
    example = x_train[:1]

    calibration = [x_train[i:i + 1] for i in range(300)]
    ptq = torchpqt.quantize(model, calibration, CONFIG, progress=False)
    ptq_state = {k: v.clone() for k, v in ptq.state_dict().items()}

    qat = torchpqt.load(ptq_state, model, example, CONFIG)  # a second copy of the PTQ model to fine-tune
    torchpqt.train_ranges(qat)
    epochs = args.qat_epochs or (1 if args.quick else 12)
    start = time.perf_counter()
    fit(qat, x_train, y_train, epochs=epochs, lr=1e-3, seed=1)
    qat_seconds = time.perf_counter() - start

    torch.save(qat.state_dict(), out / "qat_state_dict.pt")  # the supported way: state_dict + torchpqt.load
    reloaded = torchpqt.load(out / "qat_state_dict.pt", model, example, CONFIG)
    assert torch.equal(reloaded(x_test), qat(x_test).detach()), "the reloaded model differs"

    export_fp32(model, example, out / "fp32.xml")
    checks = {"ptq": check_summary(ov_export.export(ptq, example, out / "ptq.xml")),
              "qat": check_summary(ov_export.export(qat, example, out / "qat.xml"))}  # QAT: a frozen copy
    metrics = {
        "fp32": measure("fp32", model, out / "fp32.xml", x_test, y_test),
        "ptq": measure("ptq", ptq, out / "ptq.xml", x_test, y_test),
        "qat": {**measure("qat", qat, out / "qat.xml", x_test, y_test), "epochs": epochs,
                "train_seconds": round(qat_seconds, 2)},
        "config": CONFIG, "held_out": len(y_test), "quick": args.quick, "cpu_isa": cpu_isa(),
        "threads": torch.get_num_threads(), "export_check": checks,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for name in ("fp32", "ptq", "qat"):
        print(f"{name:>5}: OpenVINO IR accuracy {metrics[name]['ir']:6.2f} %  (torch {metrics[name]['torch']:6.2f} %)")
    print(f"QAT: {epochs} epochs in {qat_seconds:.1f} s; wrote {out / 'metrics.json'}")


if __name__ == "__main__":
    main()
