"""Small CNNs of the kinds whose IRs the old end-to-end export check rejected, quantized on real photos."""

import functools

import torch
import torch.nn.functional as F
from torch import nn

import torchpqt
from examples._common import image_crops


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.uniform_(-0.3, 0.3)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.7, 1.3)
    bn.bias.data.uniform_(-0.2, 0.2)
    return bn


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, ReLU6 after both, linear 1x1 project, skip."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.pw = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), _bn(mid), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), _bn(mid), nn.ReLU6())
        self.pj = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), _bn(cout))
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = self.pj(self.dw(self.pw(x)))
        return x + y if self.skip else y


class MobileNetV2ish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), _bn(16), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1, 1), InvertedResidual(16, 24, 2, 6),
                                    InvertedResidual(24, 24, 1, 6))
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), _bn(64), nn.ReLU6())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


class ConcatBranches(nn.Module):
    """A ReLU branch and a linear branch meet in a Concat (unified FakeQuantize ranges)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv0 = nn.Conv2d(3, 16, 3, padding=1)
        self.a, self.b = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 1)
        self.c = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.conv0(x))
        y = torch.cat([F.relu(self.a(x)), self.b(x)], 1)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.c(y)), 1).flatten(1))


@functools.cache
def quantized(name: str, size: int = 32, samples: int = 16) -> tuple[torch.nn.Module, torch.Tensor]:
    """``(quantize() output, 4 evaluation crops)`` of one of the models above (default config)."""
    model = {"mobilenet_v2": MobileNetV2ish, "concat": ConcatBranches}[name]().eval()
    q = torchpqt.quantize(model, image_crops(samples, size=size), {"stat_subset_size": samples}, progress=False)
    return q, torch.cat(image_crops(4, "evaluation", size=size))
