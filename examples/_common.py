"""Real photos for the examples and tests, from files that installed packages ship (nothing downloads).

The photos: scikit-learn's ``china.jpg`` (a temple) and ``flower.jpg`` (a flower), matplotlib's
``grace_hopper.jpg`` (a portrait in uniform). :func:`image_crops` cuts seeded random crops (a
random scale and aspect, optionally mirrored) and resizes them to 224×224; ``split="calibration"``
and ``split="evaluation"`` never share a crop. :func:`normalize`
applies ImageNet's mean and std.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "center_crops", "image_crops", "normalize", "photos"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SPLITS = ("calibration", "evaluation")
_SEED = 0


@functools.cache
def _photos() -> tuple[tuple[str, torch.Tensor], ...]:
    from matplotlib import cbook
    from PIL import Image
    from sklearn.datasets import load_sample_images

    sk = load_sample_images()
    images = [(name.rsplit("/", 1)[-1], np.asarray(img)) for name, img in zip(sk.filenames, sk.images)]
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        images.append(("grace_hopper.jpg", np.asarray(Image.open(f).convert("RGB"))))
    # HWC uint8 → CHW float in [0, 1]
    return tuple((name, torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255.0) for name, img in images)


def photos() -> dict[str, torch.Tensor]:
    """``{file name: CHW float tensor in [0, 1]}`` of the shipped photos (full size, not normalized)."""
    return {name: img.clone() for name, img in _photos()}


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalization of NCHW or CHW images in [0, 1]."""
    shape = (3, 1, 1)
    return (x - torch.tensor(IMAGENET_MEAN).view(shape)) / torch.tensor(IMAGENET_STD).view(shape)


def center_crops(size: int = 224) -> tuple[list[str], torch.Tensor]:
    """Each photo's largest centred square, resized to ``size``: names and a normalized NCHW batch."""
    names, out = [], []
    for name, img in _photos():
        h, w = img.shape[-2:]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        out.append(_resize(img[:, top:top + s, left:left + s], size))
        names.append(name)
    return names, normalize(torch.stack(out))


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def _boxes(count: int, shapes: list[tuple[int, int]]) -> list[tuple[int, int, int, int, int, bool]]:
    """(image index, top, left, height, width, mirrored) of ``count`` seeded crops covering 30-100 % of an image."""
    rng = np.random.default_rng(_SEED)
    boxes = []
    while len(boxes) < count:
        i = int(rng.integers(len(shapes)))
        h, w = shapes[i]
        area = rng.uniform(0.3, 1.0) * h * w
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = round(float(np.sqrt(area / aspect))), round(float(np.sqrt(area * aspect)))
        if ch > h or cw > w:
            continue
        boxes.append((i, int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw, bool(rng.integers(2))))
    return boxes


def image_crops(count: int, split: str = "calibration", size: int = 224) -> list[torch.Tensor]:
    """``count`` normalized crops, each a ``(1, 3, size, size)`` tensor; deterministic for a given split.

    One seeded stream of crops is dealt alternately to the two splits, so calibration and evaluation
    never share a crop and neither depends on how many crops the other asked for.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    images = [img for _, img in _photos()]
    boxes = _boxes(2 * count, [tuple(img.shape[-2:]) for img in images])[_SPLITS.index(split)::2]
    out = []
    for i, top, left, h, w, mirrored in boxes:
        crop = _resize(images[i][:, top:top + h, left:left + w], size)
        out.append(normalize(crop.flip(-1) if mirrored else crop)[None])
    return out


# ---------------------------------------------------------------------------------------------
# Shared by the example scripts: command line, OpenVINO inference, timing, the result table.


def example_args(doc: str, name: str):
    """``--quick`` and ``--output-dir`` (default ``results/<name>``), parsed from the command line; seeds torch
    so that models built and trained in a script are the same on every run."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples and steps (for tests)")
    ap.add_argument("--output-dir", default=f"results/{name}", help="where the IR and metrics.json go")
    args = ap.parse_args()
    torch.manual_seed(0)
    return args


def quiet_logging() -> None:
    """torchpqt's INFO messages (what it quantized, the export report) on stderr; third parties at WARNING."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("torchpqt").setLevel(logging.INFO)


def compile_ir(xml, device: str = "CPU"):
    """Compile an IR with f32 inference for the non-quantized ops (the CPU plugin's default may be bf16)."""
    import openvino as ov

    return ov.Core().compile_model(str(xml), device, {"INFERENCE_PRECISION_HINT": "f32"})


def run_ir(compiled, *inputs) -> list[torch.Tensor]:
    """Run a compiled IR on torch tensors; its outputs as torch tensors, in order."""
    result = compiled([x.numpy() for x in inputs])
    return [torch.from_numpy(result[out].copy()) for out in compiled.outputs]


def latency_ms(compiled, *inputs, repeats: int = 20) -> float:
    """Median wall time of one synchronous inference, in milliseconds (after two warm-up runs)."""
    import time

    request = compiled.create_infer_request()
    feed = [x.numpy() for x in inputs]
    for _ in range(2):
        request.infer(feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        request.infer(feed)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def export_fp32_ir(model: torch.nn.Module, example, xml) -> None:
    """The FP32 model as an IR (for the latency comparison), through the same ONNX route as the int8 one."""
    import tempfile

    import onnx
    import openvino as ov
    from torchpqt.exporters import onnx as onnx_export

    with tempfile.TemporaryDirectory(prefix="example_") as tmp:
        path = Path(tmp) / "fp32.onnx"
        onnx.save_model(onnx_export.export_proto(model, example, dynamic_batch=True), str(path))  # no log line
        ov.save_model(ov.Core().read_model(str(path)), str(xml), compress_to_fp16=False)


def cpu_isa() -> str:
    """The widest int8 instruction set of this CPU, as printed next to latency figures."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    for flag, name in (("amx_int8", "AMX"), ("avx512_vnni", "AVX512-VNNI"), ("avx512f", "AVX512"),
                       ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2")):
        if f" {flag}" in flags:
            return name
    return "SSE"


def sqnr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``other`` against ``reference``, in dB."""
    noise = (other.double() - reference.double()).pow(2).mean()
    return float(10 * torch.log10(reference.double().pow(2).mean() / noise.clamp_min(1e-30)))


def report(output_dir, metric: str, fp32: float, int8: float, seconds_quantize: float, *,
           higher_is_better: bool = True, **extra) -> dict:
    """Print the FP32 vs int8 table and write ``metrics.json`` to ``output_dir``; returns the record."""
    import json

    record = {"metric": metric, "higher_is_better": higher_is_better, "fp32": fp32, "int8": int8,
              "seconds_quantize": round(seconds_quantize, 2), **extra}
    rows = [(metric, f"{fp32:.4f}", f"{int8:.4f}")]
    rows += [(k, "", f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in extra.items()]
    rows.append(("seconds to quantize", "", f"{seconds_quantize:.1f}"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':<{width}}  {'FP32 torch':>12}  {'int8 IR':>12}")
    for name, a, b in rows:
        print(f"{name:<{width}}  {a:>12}  {b:>12}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out / 'metrics.json'}")
    return record


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two boolean masks (any shape), over the whole set."""
    pred, target = pred.bool(), target.bool()
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2 * (pred & target).sum() / total)


def fit(model: torch.nn.Module, batch_fn, loss_fn, steps: int, lr: float = 3e-3) -> torch.nn.Module:
    """Train ``model`` for ``steps`` Adam steps on ``batch_fn(step) -> (x, y)``; returns it in eval mode."""
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        x, y = batch_fn(step)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model.eval()


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of boxes ``(N, 4)`` and ``(M, 4)`` given as (x1, y1, x2, y2): an ``(N, M)`` matrix."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp_min(0).prod(-1)
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp_min(1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices of the boxes greedy non-maximum suppression keeps, best first."""
    order, keep = scores.argsort(descending=True), []
    while order.numel():
        keep.append(int(order[0]))
        order = order[1:][box_iou(boxes[order[:1]], boxes[order[1:]])[0] <= iou]
    return torch.tensor(keep, dtype=torch.long)


def calibration_crops(count: int = 300) -> list[torch.Tensor]:
    """The classification example's calibration set (for the CLI config examples/configs/classification.json)."""
    return image_crops(count, "calibration")


def ir_latencies(model: torch.nn.Module, example, int8_xml) -> dict[str, float]:
    """Latency of the FP32 model's IR (written next to the int8 one) and of the int8 IR, for one ``example``."""
    example = example if isinstance(example, tuple) else (example,)
    fp32_xml = Path(int8_xml).with_name(Path(int8_xml).stem + "_fp32.xml")
    export_fp32_ir(model, example if len(example) > 1 else example[0], fp32_xml)
    fp32 = latency_ms(compile_ir(fp32_xml), *example)
    int8 = latency_ms(compile_ir(int8_xml), *example)
    return {"latency_ms_fp32_ir": fp32, "latency_ms_int8_ir": int8, "speedup": fp32 / int8, "cpu_isa": cpu_isa()}


def check_summary(report) -> dict:
    """The export check's key numbers (``report`` from ``ov_export.export``), printed and returned."""
    keys = ("sim_sqnr_db", "max_diff_steps", "int8_sqnr_db", "top1_agreement", "int8_share")
    summary = {k: (round(v, 4) if isinstance(v, float) else v) for k in keys if (v := getattr(report, k)) is not None}
    summary["flips"] = report.flips
    print(f"export check passed on {Path(report.path).name}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return summary
