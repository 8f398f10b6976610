"""Face detection: MTCNN (P-Net, R-Net, O-Net) with its real weights, each net quantized to int8.

    pip install -e '.[openvino,examples]'
    pip install --no-deps facenet-pytorch   # only for its weight files (its pins would replace torch)
    python examples/face_detection.py [--quick] [--output-dir results/face_detection]

The three networks are defined here (as in facenet-pytorch, so its state dicts load strictly) and
the weights are read from the data files its wheel ships; the package itself is never imported
(it needs torchvision). The cascade follows facenet-pytorch's ``detect_face``: an image pyramid
through the fully convolutional P-Net, then R-Net on 24×24 and O-Net on 48×48 crops of the
candidates, with box regression and NMS between stages. POT's face-detection example quantized
the three nets separately, and so does this one: calibration inputs for each net are what the
FP32 cascade feeds it on random crops of the shipped photos. The evaluation runs the whole cascade
with the FP32 torch nets and with the int8 IRs on full photos (grace_hopper.jpg and the others,
mirrored too) and compares the faces found: how many, and their IoU.
"""

import time
from importlib import util
from pathlib import Path

import _common as common  # examples/_common.py: photos, NMS/IoU, OpenVINO helpers, the result table
import torch
import torch.nn.functional as F
from torch import nn
from torchpqt.exporters import openvino as ov_export

import torchpqt

THRESHOLDS, MIN_FACE, FACTOR = (0.6, 0.7, 0.7), 20, 0.709

# Small CNNs with PReLU on CPU: the performance preset; a few hundred candidate crops per net.
CONFIG = {"name": "DefaultQuantization",
          "params": {"target_device": "CPU", "preset": "performance", "stat_subset_size": 300}}


class PNet(nn.Module):  # 12×12 receptive field, stride 2: (box regression, face probability) per cell
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 10, 3), nn.PReLU(10), nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x)))))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), 1)


class RNet(nn.Module):  # 24×24 crops
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 28, 3), nn.PReLU(28), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2, self.pool2 = nn.Conv2d(28, 48, 3), nn.PReLU(48), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool2(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x))))))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).flatten(1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), 1)


class ONet(nn.Module):  # 48×48 crops; also predicts 5 landmarks (unused here)
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2, self.pool2 = nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3, self.pool3 = nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool2(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x))))))
        x = self.prelu4(self.conv4(self.pool3(self.prelu3(self.conv3(x))))).permute(0, 3, 2, 1).flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), torch.softmax(self.dense6_1(x), 1)  # (landmarks dense6_3 left out)


def load_nets() -> dict[str, nn.Module]:
    spec = util.find_spec("facenet_pytorch")
    if spec is None:
        raise SystemExit("this example reads MTCNN's weights from facenet-pytorch: pip install --no-deps facenet-pytorch")
    data = Path(spec.origin).parent / "data"
    nets = {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}
    for name, net in nets.items():
        state = torch.load(data / f"{name}.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    return {name: net.eval() for name, net in nets.items()}


def _square(b: torch.Tensor) -> torch.Tensor:
    """facenet's rerec: each box grown to a square around its centre."""
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = torch.maximum(w, h)
    x1, y1 = b[:, 0] + w / 2 - side / 2, b[:, 1] + h / 2 - side / 2
    return torch.stack([x1, y1, x1 + side, y1 + side], 1)


def _regress(b: torch.Tensor, reg: torch.Tensor, plus_one: bool = True) -> torch.Tensor:
    size = (b[:, 2:] - b[:, :2] + (1 if plus_one else 0)).repeat(1, 2)
    return b + reg * size


def _crops(img: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """facenet's pad + imresample: each box (clipped to the image, 1-based) resized to size×size."""
    h, w = img.shape[-2:]
    out = []
    for x1, y1, x2, y2 in boxes.trunc().int().tolist():
        x1, y1, x2, y2 = max(x1, 1), max(y1, 1), min(x2, w), min(y2, h)
        out.append(F.interpolate(img[None, :, y1 - 1:y2, x1 - 1:x2], size=(size, size), mode="area"))
    return (torch.cat(out) - 127.5) * 0.0078125


def cascade(img: torch.Tensor, run, record=None) -> torch.Tensor:
    """Faces (K, 5: x1, y1, x2, y2, score) in ``img`` (3, H, W, values 0-255). ``run(name, x)`` runs a net;
    ``record(name, x)``, if given, sees every net input (for calibration)."""
    h, w = img.shape[-2:]
    scale, minl, boxes = 12.0 / MIN_FACE, min(h, w) * 12.0 / MIN_FACE, []
    while minl >= 12:  # P-Net over the image pyramid
        x = (F.interpolate(img[None], size=(int(h * scale + 1), int(w * scale + 1)), mode="area") - 127.5) * 0.0078125
        if record:
            record("pnet", x)
        reg, prob = run("pnet", x)
        iy, ix = torch.nonzero(prob[0, 1] >= THRESHOLDS[0], as_tuple=True)
        cells = torch.stack([ix, iy], 1).float()
        b = torch.cat([((2 * cells + 1) / scale).floor(), ((2 * cells + 12) / scale).floor()], 1)
        score, r = prob[0, 1, iy, ix], reg[0][:, iy, ix].T
        keep = common.nms(b, score, 0.5) if len(score) else torch.zeros(0, dtype=torch.long)
        boxes.append(torch.cat([b, score[:, None], r], 1)[keep])
        scale, minl = scale * FACTOR, minl * FACTOR
    boxes = torch.cat(boxes)
    boxes = boxes[common.nms(boxes[:, :4], boxes[:, 4], 0.7)] if len(boxes) else boxes
    if not len(boxes):
        return torch.zeros(0, 5)
    b = _square(_regress(boxes[:, :4], boxes[:, 5:9], plus_one=False))
    for name, size, nms_iou in (("rnet", 24, 0.7), ("onet", 48, 0.7)):  # refine on crops
        x = _crops(img, b, size)
        if record:
            record(name, x)
        reg, prob = run(name, x)
        keep = prob[:, 1] > THRESHOLDS[1 if name == "rnet" else 2]
        b, reg, score = b[keep], reg[keep], prob[keep, 1]
        if not len(b):
            return torch.zeros(0, 5)
        if name == "rnet":
            keep = common.nms(b, score, nms_iou)
            b = _square(_regress(b[keep], reg[keep]))
        else:
            b = _regress(b, reg)
            keep = common.nms(b, score, nms_iou)
            return torch.cat([b[keep], score[keep, None]], 1)


class IRNets:
    """The int8 IRs as ``run(name, x)``; P-Net's IR is reshaped to each pyramid level (it is fully convolutional)."""

    def __init__(self, xmls: dict[str, Path]) -> None:
        import openvino as ov

        self.core, self.xmls, self.compiled = ov.Core(), xmls, {}

    def __call__(self, name: str, x: torch.Tensor):
        key = (name, tuple(x.shape[2:]))
        if key not in self.compiled:
            model = self.core.read_model(str(self.xmls[name]))
            model.reshape([-1, *x.shape[1:]])
            self.compiled[key] = self.core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return common.run_ir(self.compiled[key], x)


def main() -> None:
    args = common.example_args(__doc__, "face_detection")
    common.quiet_logging()
    out = Path(args.output_dir)
    nets = load_nets()

    def fp32(name, x):
        with torch.no_grad():
            return nets[name](x)

    # Calibration: what the FP32 cascade feeds each net on random crops of the photos (P-Net: 48×48
    # patches of its pyramid levels, as one fixed shape; the IR is reshaped per level later).
    photos = {name: img * 255 for name, img in common.photos().items()}
    g = torch.Generator().manual_seed(0)
    samples = {"pnet": [], "rnet": [], "onet": []}

    def record(name, x):
        if name == "pnet":
            hh, ww = x.shape[-2:]
            if min(hh, ww) >= 48:
                t, left = int(torch.randint(hh - 47, (1,), generator=g)), int(torch.randint(ww - 47, (1,), generator=g))
                samples["pnet"].append(x[:, :, t:t + 48, left:left + 48])
        else:
            samples[name] += list(x.split(1))

    for i in range(6 if args.quick else 24):
        img = list(photos.values())[i % len(photos)]
        h, w = img.shape[-2:]
        s = float(0.5 + 0.5 * torch.rand(1, generator=g))
        t, left = int(torch.rand(1, generator=g) * h * (1 - s)), int(torch.rand(1, generator=g) * w * (1 - s))
        cascade(img[:, t:t + int(h * s), left:left + int(w * s)], fp32, record)

    seconds, xmls = 0.0, {}
    for name, net in nets.items():
        data = samples[name][: 64 if args.quick else 300]
        t0 = time.perf_counter()
        qnet = torchpqt.quantize(net, data, {**CONFIG, "params": {**CONFIG["params"], "stat_subset_size": len(data)}})
        seconds += time.perf_counter() - t0
        xmls[name] = out / f"{name}_int8.xml"
        ov_export.export(qnet, data[0], xmls[name], check=False)  # the cascade below is evaluated on the IRs

    # Evaluation: the whole cascade, FP32 torch vs int8 IRs, on the full photos and their mirrors.
    int8 = IRNets(xmls)
    test = {"grace_hopper.jpg": photos["grace_hopper.jpg"]}
    if not args.quick:
        test |= {f"{k} (mirrored)": v.flip(-1) for k, v in photos.items()} | {
            k: v for k, v in photos.items() if k != "grace_hopper.jpg"}
    found_fp32 = found_int8 = matched = 0
    ious = []
    for name, img in test.items():
        ref, got = cascade(img, fp32), cascade(img, int8)
        found_fp32, found_int8 = found_fp32 + len(ref), found_int8 + len(got)
        if len(ref):
            best = common.box_iou(ref[:, :4], got[:, :4]).max(1).values if len(got) else torch.zeros(len(ref))
            ious += best.tolist()
            matched += int((best >= 0.5).sum())
        print(f"{name}: {len(ref)} face(s) FP32 {ref[:, :4].round().int().tolist()}, "
              f"{len(got)} int8 {got[:, :4].round().int().tolist()}")
    mean_iou = sum(ious) / max(len(ious), 1)
    common.report(out, "mean IoU of the FP32 faces with int8's", 1.0, mean_iou, seconds,
                  faces_fp32=found_fp32, faces_int8=found_int8, faces_matched_iou50=matched, images=len(test))


if __name__ == "__main__":
    main()
