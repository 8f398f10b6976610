"""Medical segmentation: a 2D U-Net on synthetic microscopy images, quantized to int8; Dice FP32 vs int8.

    pip install -e '.[openvino,examples]'
    python examples/segmentation_medical.py [--quick] [--output-dir results/segmentation_medical]

The images look like fluorescence microscopy: bright elliptical cells of random size and intensity on
an uneven, noisy background, with the cell masks known exactly. The U-Net (two down and two up
levels, skip connections, ConvTranspose2d upsampling) is trained here in well under a minute.
"""

import time
from pathlib import Path

import _common as common  # examples/_common.py: training loop, Dice, OpenVINO helpers, the result table
import torch
from torch import nn
from torchpqt.exporters import openvino as ov_export

import torchpqt

SIZE = 64

# A CNN on CPU: POT's performance preset (symmetric int8 weights and activations; the ReLU outputs
# use the unsigned grid), ranges from 100 calibration images.
CONFIG = {"name": "DefaultQuantization",
          "params": {"target_device": "CPU", "preset": "performance", "stat_subset_size": 100}}


def microscopy(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images (N, 1, SIZE, SIZE) in about [0, 1] and their cell masks (N, 1, SIZE, SIZE)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    images, masks = [], []
    for _ in range(count):
        img, mask = torch.zeros(SIZE, SIZE), torch.zeros(SIZE, SIZE, dtype=torch.bool)
        for _ in range(int(torch.randint(3, 9, (1,), generator=g))):
            cy, cx = torch.rand(2, generator=g) * SIZE
            ry, rx = 3 + torch.rand(2, generator=g) * 6
            angle = torch.rand(1, generator=g) * 3.1416
            dy, dx = yy - cy, xx - cx
            u = (dx * torch.cos(angle) + dy * torch.sin(angle)) / rx
            v = (-dx * torch.sin(angle) + dy * torch.cos(angle)) / ry
            r2 = u ** 2 + v ** 2
            cell = r2 <= 1
            img = torch.maximum(img, (0.4 + 0.6 * torch.rand(1, generator=g)) * torch.exp(-0.7 * r2) * cell)
            mask |= cell
        background = 0.15 * torch.sin(xx / (8 + 8 * torch.rand(1, generator=g))) * torch.cos(yy / 13) + 0.2
        img = img + background + 0.06 * torch.randn(SIZE, SIZE, generator=g)
        images.append(img)
        masks.append(mask)
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.down1, self.down2, self.bottom = block(1, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2), block(4 * c, 2 * c)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2), block(2 * c, c)
        self.out = nn.Conv2d(c, 1, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # logits of "cell"
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        b = self.bottom(self.pool(d2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], 1))
        return self.out(self.dec1(torch.cat([self.up1(u2), d1], 1)))


def main() -> None:
    args = common.example_args(__doc__, "segmentation_medical")
    common.quiet_logging()
    out = Path(args.output_dir)
    steps, n_eval = (100, 16) if args.quick else (400, 64)

    train_x, train_y = microscopy(512, seed=1)
    model = common.fit(UNet(), lambda s: (train_x[s % 64 * 8:][:8], train_y[s % 64 * 8:][:8].float()),
                       nn.functional.binary_cross_entropy_with_logits, steps)
    calibration = list(microscopy(32 if args.quick else 100, seed=2)[0].split(1))
    test_x, test_y = microscopy(n_eval, seed=3)

    t0 = time.perf_counter()
    qmodel = torchpqt.quantize(model, calibration, CONFIG)
    seconds = time.perf_counter() - t0
    xml = out / "unet2d_int8.xml"
    common.check_summary(ov_export.export(qmodel, calibration[0], xml))  # the Dice below is measured on this IR

    with torch.no_grad():
        fp32 = common.dice(model(test_x) > 0, test_y)
    int8 = common.dice(common.run_ir(common.compile_ir(xml), test_x)[0] > 0, test_y)
    common.report(out, "Dice", fp32, int8, seconds, test_images=n_eval, train_steps=steps,
                  **common.ir_latencies(model, calibration[0], xml))


if __name__ == "__main__":
    main()
