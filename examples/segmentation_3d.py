"""3D segmentation: a small 3D U-Net (Conv3d, ConvTranspose3d) on synthetic volumes; Dice FP32 vs int8.

    pip install -e '.[openvino,examples]'
    python examples/segmentation_3d.py [--quick] [--output-dir results/segmentation_3d]

Each 24³ volume holds a few bright ellipsoids ("lesions") of random size and contrast in a smoothly
varying, noisy tissue background; the masks are known exactly. The U-Net has one down and one up
level (Conv3d blocks, max pooling, a ConvTranspose3d and a skip connection) and is trained here.
"""

import time
from pathlib import Path

import _common as common  # examples/_common.py: training loop, Dice, OpenVINO helpers, the result table
import torch
from torch import nn
from torchpqt.exporters import openvino as ov_export

import torchpqt

SIZE = 24

# POT's performance preset for CPU: symmetric int8, weights per output channel (Conv3d and
# ConvTranspose3d alike), activations per tensor.
CONFIG = {"name": "DefaultQuantization",
          "params": {"target_device": "CPU", "preset": "performance", "stat_subset_size": 64}}


def volumes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` volumes (N, 1, D, H, W) and their lesion masks."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(SIZE).float()] * 3, indexing="ij"))  # (3, D, H, W)
    images, masks = [], []
    for _ in range(count):
        mask = torch.zeros(SIZE, SIZE, SIZE, dtype=torch.bool)
        img = 0.1 * torch.sin(grid[2] / (4 + 4 * torch.rand(1, generator=g))) * torch.cos(grid[0] / 7)
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            centre = 4 + torch.rand(3, 1, 1, 1, generator=g) * (SIZE - 8)
            radii = 2 + torch.rand(3, 1, 1, 1, generator=g) * 4
            lesion = (((grid - centre) / radii) ** 2).sum(0) <= 1
            img = img + (0.5 + 0.5 * torch.rand(1, generator=g)) * lesion
            mask |= lesion
        images.append(img + 0.15 * torch.randn(SIZE, SIZE, SIZE, generator=g))
        masks.append(mask)
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(),
                         nn.Conv3d(cout, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU())


class UNet3D(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.down, self.bottom = block(1, c), block(c, 2 * c)
        self.up, self.dec = nn.ConvTranspose3d(2 * c, c, 2, stride=2), block(2 * c, c)
        self.out = nn.Conv3d(c, 1, 1)
        self.pool = nn.MaxPool3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # logits of "lesion"
        d = self.down(x)
        return self.out(self.dec(torch.cat([self.up(self.bottom(self.pool(d))), d], 1)))


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice: lesions are a few % of the voxels, BCE alone learns "background"."""
    p = torch.sigmoid(logits)
    soft_dice = 2 * (p * target).sum() / (p.sum() + target.sum() + 1)
    return nn.functional.binary_cross_entropy_with_logits(logits, target) + 1 - soft_dice


def main() -> None:
    args = common.example_args(__doc__, "segmentation_3d")
    common.quiet_logging()
    out = Path(args.output_dir)
    steps, n_eval = (80, 8) if args.quick else (300, 32)

    train_x, train_y = volumes(256, seed=1)
    model = common.fit(UNet3D(), lambda s: (train_x[s % 64 * 4:][:4], train_y[s % 64 * 4:][:4].float()),
                       loss_fn, steps, lr=1e-2)
    calibration = list(volumes(16 if args.quick else 64, seed=2)[0].split(1))
    test_x, test_y = volumes(n_eval, seed=3)

    t0 = time.perf_counter()
    qmodel = torchpqt.quantize(model, calibration, CONFIG)
    seconds = time.perf_counter() - t0
    xml = out / "unet3d_int8.xml"
    common.check_summary(ov_export.export(qmodel, calibration[0], xml))  # the Dice below is measured on this IR

    with torch.no_grad():
        fp32 = common.dice(model(test_x) > 0, test_y)
    int8 = common.dice(common.run_ir(common.compile_ir(xml), test_x)[0] > 0, test_y)
    common.report(out, "Dice", fp32, int8, seconds, test_volumes=n_eval, train_steps=steps,
                  **common.ir_latencies(model, calibration[0], xml))


if __name__ == "__main__":
    main()
