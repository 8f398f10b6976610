"""What the CLI writes: the folder layout of POT's CLI, ``report.json`` and the torch dump."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from torchpqt._json import jsonable, tensor_values

__all__ = [
    "OutputLayout",
    "fake_quantize_ranges",
    "make_layout",
    "save_torch_model",
    "write_report",
]

logger = logging.getLogger("torchpqt")


@dataclasses.dataclass(frozen=True)
class OutputLayout:
    """``log_dir`` holds log.txt; ``ir_dir`` holds <model>.xml/.bin, report.json and the torch dump."""

    log_dir: Path
    ir_dir: Path
    model_name: str

    @property
    def xml(self) -> Path:
        return self.ir_dir / f"{self.model_name}.xml"


def make_layout(output_dir: Path, model_name: str, direct_dump: bool, now: datetime | None = None) -> OutputLayout:
    """POT's layout: ``DIR/<model>_DefaultQuantization/<YYYY-MM-DD_HH-MM-SS>/optimized/`` or, with -d, ``DIR``."""
    if direct_dump:
        return OutputLayout(output_dir, output_dir, model_name)
    stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    log_dir = output_dir / f"{model_name}_DefaultQuantization" / stamp
    return OutputLayout(log_dir, log_dir / "optimized", model_name)


def fake_quantize_ranges(qmodel: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {levels, input_low, input_high, output_low, output_high}}`` of every FakeQuantize."""
    from torchpqt.quant.fake_quantize import FakeQuantize

    ranges = {}
    for name, module in qmodel.named_modules():
        if isinstance(module, FakeQuantize):
            fields = ("input_low", "input_high", "output_low", "output_high")
            ranges[name] = {"levels": int(module.levels), **{f: tensor_values(getattr(module, f)) for f in fields}}
    return ranges


def write_report(path: Path, **sections: Any) -> None:
    """Write report.json; dataclasses (the export report, the config) become objects, the rest strings."""
    path.write_text(json.dumps(jsonable(sections), indent=2, allow_nan=True) + "\n", encoding="utf-8")


def save_torch_model(qmodel: torch.nn.Module, example_inputs: tuple[Any, ...], folder: Path, name: str) -> Path:
    """``dump_intermediate_model``: the fake-quantized torch model, as a .pt2 when torch.export can capture
    it (loadable without torchpqt's classes), else the pickled module (needs torchpqt to load)."""
    try:
        program = torch.export.export(qmodel, tuple(example_inputs))
        path = folder / f"{name}_fq.pt2"
        torch.export.save(program, str(path))
    except Exception as exc:  # noqa: BLE001  (capture limits are torch's; the pickle still gives a dump)
        logger.warning("torch.export could not capture the quantized model (%s); pickling it instead", exc)
        path = folder / f"{name}_fq.pt"
        torch.save(qmodel, path)
    return path
