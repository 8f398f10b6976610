"""Object detection: a small single-shot (YOLO-style) detector trained on procedural scenes; mAP@0.5.

    pip install -e '.[openvino,examples]'
    python examples/detection.py [--quick] [--output-dir results/detection]

Each 64×64 scene shows one to three shapes (disc, square, triangle: the three classes) of random
size and colour on a textured background. The detector is a five-conv backbone down to an 8×8 grid
(stride 8) and a 1×1 head that predicts, per cell, objectness, class scores and a box (centre offset
in the cell, log size) — the single-shot design of YOLO/SSD with one anchor. It trains here in
about a minute; decoding and NMS run outside the model, on the raw grid of torch or the IR alike.
"""

import math
import time
from pathlib import Path

import _common as common  # examples/_common.py: training loop, IoU/NMS, OpenVINO helpers, the table
import torch
from torch import nn
from torchpqt.exporters import openvino as ov_export

import torchpqt

SIZE, STRIDE, CLASSES = 64, 8, 3
GRID = SIZE // STRIDE

# The performance preset on CPU: symmetric int8 everywhere. The head's box outputs are not clipped
# (no activation FakeQuantize after the last conv, as POT: outputs stay float).
CONFIG = {"name": "DefaultQuantization",
          "params": {"target_device": "CPU", "preset": "performance", "stat_subset_size": 100}}


def scenes(count: int, seed: int):
    """``count`` images (N, 3, SIZE, SIZE) and per image a list of (class, x1, y1, x2, y2)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE).float() + 0.5, torch.arange(SIZE).float() + 0.5, indexing="ij")
    images, targets = [], []
    for _ in range(count):
        freq = 0.2 + 0.6 * torch.rand(2, generator=g)
        img = 0.35 + 0.15 * torch.sin(xx * freq[0] + yy * freq[1])[None] * torch.rand(3, 1, 1, generator=g)
        img = img + 0.05 * torch.randn(3, SIZE, SIZE, generator=g)
        boxes = []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cls = int(torch.randint(CLASSES, (1,), generator=g))
            s = float(10 + 14 * torch.rand(1, generator=g))
            cx, cy = (s / 2 + torch.rand(2, generator=g) * (SIZE - s)).tolist()
            u, v = (xx - cx) / (s / 2), (yy - cy) / (s / 2)  # in [-1, 1] inside the box
            if cls == 0:
                shape = u ** 2 + v ** 2 <= 1
            elif cls == 1:
                shape = (u.abs() <= 1) & (v.abs() <= 1)
            else:
                shape = (v <= 1) & (u.abs() <= (v + 1) / 2)  # apex on top
            img = torch.where(shape, torch.rand(3, 1, 1, generator=g) * 0.6 + 0.4 * (cls == 1), img)
            boxes.append((cls, cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2))
        images.append(img)
        targets.append(boxes)
    return torch.stack(images), targets


def encode(targets) -> torch.Tensor:
    """Training targets on the grid: (N, 5 + CLASSES, GRID, GRID) = objectness, dx, dy, log w, log h, class."""
    t = torch.zeros(len(targets), 5 + CLASSES, GRID, GRID)
    for n, boxes in enumerate(targets):
        for cls, x1, y1, x2, y2 in boxes:
            cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
            i, j = int(cy), int(cx)
            t[n, :5, i, j] = torch.tensor([1.0, cx - j, cy - i, math.log((x2 - x1) / STRIDE), math.log((y2 - y1) / STRIDE)])
            t[n, 5 + cls, i, j] = 1.0
    return t


def loss_fn(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    obj = t[:, 0] > 0
    loss = nn.functional.binary_cross_entropy_with_logits(out[:, 0], t[:, 0], pos_weight=torch.tensor(5.0))
    pos = out.permute(0, 2, 3, 1)[obj]
    tgt = t.permute(0, 2, 3, 1)[obj]
    loss = loss + nn.functional.mse_loss(torch.sigmoid(pos[:, 1:3]), tgt[:, 1:3]) * 5
    loss = loss + nn.functional.mse_loss(pos[:, 3:5], tgt[:, 3:5])
    return loss + nn.functional.cross_entropy(pos[:, 5:], tgt[:, 5:].argmax(1))


def decode(out: torch.Tensor, threshold: float = 0.05):
    """Raw grid (N, 5 + CLASSES, GRID, GRID) → per image a list of (class, score, box) after NMS."""
    detections = []
    jj, ii = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="xy")
    for o in out:
        score = torch.sigmoid(o[0]) * torch.softmax(o[5:], 0).max(0).values
        cls = o[5:].argmax(0)
        cx, cy = (jj + torch.sigmoid(o[1])) * STRIDE, (ii + torch.sigmoid(o[2])) * STRIDE
        w, h = torch.exp(o[3]) * STRIDE, torch.exp(o[4]) * STRIDE
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).reshape(-1, 4)
        score, cls = score.reshape(-1), cls.reshape(-1)
        sel = score > threshold
        boxes, score, cls = boxes[sel], score[sel], cls[sel]
        keep = common.nms(boxes, score, 0.5) if len(score) else torch.zeros(0, dtype=torch.long)
        detections.append([(int(cls[k]), float(score[k]), boxes[k]) for k in keep])
    return detections


def mean_ap(detections, targets, iou: float = 0.5) -> float:
    """VOC-style mAP: per class, the area under the interpolated precision-recall curve, averaged."""
    aps = []
    for c in range(CLASSES):
        found = sorted(((s, n, b) for n, d in enumerate(detections) for k, s, b in d if k == c), key=lambda r: -r[0])
        gt = {n: torch.tensor([b[1:] for b in boxes if b[0] == c]).reshape(-1, 4) for n, boxes in enumerate(targets)}
        used = {n: torch.zeros(len(g), dtype=torch.bool) for n, g in gt.items()}
        total = sum(len(g) for g in gt.values())
        tp = []
        for _, n, box in found:
            ious = common.box_iou(box[None], gt[n])[0] if len(gt[n]) else torch.zeros(0)
            best = int(ious.argmax()) if len(ious) else -1
            hit = best >= 0 and ious[best] >= iou and not used[n][best]
            if hit:
                used[n][best] = True
            tp.append(float(hit))
        tp = torch.tensor(tp)
        recall = tp.cumsum(0) / max(total, 1)
        precision = tp.cumsum(0) / torch.arange(1, len(tp) + 1)
        # precision made monotone from the right, integrated over recall
        precision = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0]) if len(tp) else precision
        steps = torch.diff(torch.cat([torch.zeros(1), recall]))
        aps.append(float((steps * precision).sum()))
    return sum(aps) / CLASSES


class Detector(nn.Module):
    def __init__(self, c: int = 32) -> None:
        super().__init__()

        def conv(cin, cout, stride=1):
            return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.backbone = nn.Sequential(*conv(3, c // 2, 2), *conv(c // 2, c, 2), *conv(c, c),
                                      *conv(c, 2 * c, 2), *conv(2 * c, 2 * c))
        self.head = nn.Conv2d(2 * c, 5 + CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def main() -> None:
    args = common.example_args(__doc__, "detection")
    common.quiet_logging()
    out = Path(args.output_dir)
    steps, n_eval = (300, 64) if args.quick else (1500, 256)

    train_x, train_t = scenes(2048, seed=1)
    train_y = encode(train_t)
    model = common.fit(Detector(), lambda s: (train_x[s % 64 * 32:][:32], train_y[s % 64 * 32:][:32]),
                       loss_fn, steps)
    calibration = list(scenes(32 if args.quick else 100, seed=2)[0].split(1))
    test_x, test_t = scenes(n_eval, seed=3)

    t0 = time.perf_counter()
    qmodel = torchpqt.quantize(model, calibration, CONFIG)
    seconds = time.perf_counter() - t0
    xml = out / "detector_int8.xml"
    common.check_summary(ov_export.export(qmodel, calibration[0], xml))  # the mAP below is measured on this IR

    with torch.no_grad():
        fp32 = mean_ap(decode(model(test_x)), test_t)
    int8 = mean_ap(decode(common.run_ir(common.compile_ir(xml), test_x)[0]), test_t)
    common.report(out, "mAP@0.5", fp32, int8, seconds, test_images=n_eval, train_steps=steps,
                  **common.ir_latencies(model, calibration[0], xml))


if __name__ == "__main__":
    main()
