"""The observer a prepared model carries at each activation FakeQuantize point."""

from __future__ import annotations

import torch

from torchpqt.statistics.collector import TensorStatistics


class Observer(torch.nn.Module):
    """Records the statistics of the tensor passing through and returns it unchanged.

    Calibration therefore runs the FP32 network, as POT did: every activation range is a
    statistic of the float model (spec §2, pass #2).
    """

    def __init__(self, name: str, stats: TensorStatistics):
        super().__init__()
        self.point_name = name
        self.stats = stats
        self.ndim: int | None = None
        self.channels: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and not torch.compiler.is_compiling():
            self.stats.update(x)
            if self.ndim is None:  # nn.Module attribute writes are slow: once is enough
                self.ndim = x.dim()
                self.channels = x.shape[1] if x.dim() > 1 else None
        return x

    def extra_repr(self) -> str:
        return f"{self.point_name!r}, batches={self.stats.num_batches}"
