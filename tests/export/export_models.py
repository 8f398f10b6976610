"""Small fake-quantized torch models built by hand for the export tests."""

import torch
import torch.nn.functional as F

from torchpqt.quant.fake_quantize import FakeQuantize


def weight_fq(weight: torch.Tensor, axis: int, levels: int = 255) -> FakeQuantize:
    """POT-style symmetric per-channel weight FakeQuantize (ranges broadcast along ``axis``)."""
    dims = [d for d in range(weight.dim()) if d != axis]
    m = weight.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-4)
    return FakeQuantize(levels, -m, m)


def act_fq(low: float, high: float) -> FakeQuantize:
    return FakeQuantize(256, low, high)


class Zoo(torch.nn.Module):
    """One branch per weighted op type; each output checks one export path."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def p(*shape):
            return torch.nn.Parameter(torch.randn(*shape, generator=g) * 0.3)

        self.w_conv, self.b_conv = p(8, 4, 3, 3), p(8)
        self.w_dw = p(4, 1, 3, 3)
        self.w_convt = p(4, 3, 3, 3)  # ConvTranspose2d, groups=2: [Cin, Cout/groups, kH, kW]
        self.w_conv1d, self.w_conv3d = p(6, 4, 3), p(5, 4, 3, 3, 3)
        self.w_linear, self.b_linear = p(7, 12), p(7)
        self.w_matmul = p(12, 9)  # x @ W: per output feature on axis 1
        self.fq_conv, self.fq_dw = weight_fq(self.w_conv, 0), weight_fq(self.w_dw, 0)
        self.fq_convt = weight_fq(self.w_convt, 1)
        self.fq_conv1d, self.fq_conv3d = weight_fq(self.w_conv1d, 0), weight_fq(self.w_conv3d, 0)
        self.fq_linear, self.fq_matmul = weight_fq(self.w_linear, 0), weight_fq(self.w_matmul, 1)
        self.fq_x, self.fq_x1, self.fq_x3 = act_fq(0.0, 4.0), act_fq(-2.0, 2.0 * 127 / 128), act_fq(0.0, 4.0)
        self.fq_v = act_fq(-3.0, 3.0 * 127 / 128)
        # per-channel activation ranges [1,C,1,1], feeding the depthwise conv (per-channel there too)
        self.fq_xc = FakeQuantize(256, torch.zeros(1, 4, 1, 1), torch.linspace(3, 4.5, 4).reshape(1, 4, 1, 1))

    def forward(self, x, x1, x3, v):
        xq = self.fq_x(x)
        return (F.conv2d(xq, self.fq_conv(self.w_conv), self.b_conv, padding=1),
                F.conv2d(self.fq_xc(x), self.fq_dw(self.w_dw), groups=4),
                F.conv_transpose2d(xq, self.fq_convt(self.w_convt), groups=2, stride=2),
                F.conv1d(self.fq_x1(x1), self.fq_conv1d(self.w_conv1d)),
                F.conv3d(self.fq_x3(x3), self.fq_conv3d(self.w_conv3d)),
                F.linear(self.fq_v(v), self.fq_linear(self.w_linear), self.b_linear),
                torch.matmul(self.fq_v(v), self.fq_matmul(self.w_matmul)))


def zoo_inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 4, 8, 8, generator=g) * 4.5, torch.randn(batch, 4, 16, generator=g),
            torch.rand(batch, 4, 5, 6, 6, generator=g) * 4.5, torch.randn(batch, 12, generator=g) * 2)


class SmallConvNet(torch.nn.Module):
    """conv-relu-conv-relu-pool-linear, every weighted op fake-quantized."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32, 10)
        self.fq_in, self.fq_a1, self.fq_a2, self.fq_a3 = act_fq(-2.0, 2.0 * 127 / 128), act_fq(0.0, 2.0), \
            act_fq(0.0, 2.0), act_fq(0.0, 1.0)
        self.fq_w1, self.fq_w2 = weight_fq(self.conv1.weight, 0), weight_fq(self.conv2.weight, 0)
        self.fq_wfc = weight_fq(self.fc.weight, 0)

    def forward(self, x):
        x = F.relu(F.conv2d(self.fq_in(x), self.fq_w1(self.conv1.weight), self.conv1.bias, padding=1))
        x = F.relu(F.conv2d(self.fq_a1(x), self.fq_w2(self.conv2.weight), self.conv2.bias, padding=1))
        x = F.adaptive_avg_pool2d(self.fq_a2(x), 1).flatten(1)
        return F.linear(self.fq_a3(x), self.fq_wfc(self.fc.weight), self.fc.bias)
