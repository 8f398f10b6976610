"""A small CNN made hypersensitive on purpose: conv1's output channel 0 is scaled up a hundredfold (an
outlier channel that conv2 reads with zero weights, like the massive activations of large transformers), so
conv2's per-tensor input FakeQuantize gets a range a hundred times too wide for the seven channels that
carry the signal."""

import torch
import torch.nn.functional as F
from torch import nn

OUTLIER = 100.0


class OutlierCNN(nn.Module):
    def __init__(self, outlier: float = OUTLIER) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 8 * 8, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() != 2 else 0.05))
            self.conv1.bias.abs_()
            self.conv1.weight[0] *= outlier
            self.conv1.bias[0] *= outlier
            self.conv2.weight[:, 0] = 0.0

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(x.flatten(1))


def samples(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, 8, 8, generator=g) for _ in range(n)]
