"""What the CLI writes: the folder layout of POT's CLI, ``log.txt`` and ``report.json``."""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.handlers
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "OutputLayout",
    "attach_log_file",
    "fake_quantize_ranges",
    "make_layout",
    "save_torch_model",
    "setup_logging",
    "teardown_logging",
    "write_report",
]

logger = logging.getLogger("torchpqt")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LOGGERS = ("torchpqt", "py.warnings")
_MARK = "_torchpqt_cli"  # tags the CLI's handlers so that teardown removes only those


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


def setup_logging(level: str) -> logging.handlers.MemoryHandler:
    """Log to stdout (stderr is kept for the one-line error and the progress bar), and buffer the records
    until the output folder exists so that log.txt gets them all."""
    root = logging.getLogger("torchpqt")
    root.setLevel(level)
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    for handler in (stream, buffer):
        setattr(handler, _MARK, True)
    for name in _LOGGERS:
        target = logging.getLogger(name)
        target.addHandler(stream)
        target.addHandler(buffer)
        target.propagate = False
    logging.captureWarnings(True)  # torch/onnx warnings into the log, not onto stderr
    return buffer


def attach_log_file(buffer: logging.handlers.MemoryHandler, path: Path) -> None:
    """Start writing log.txt, including the records logged before the folder existed."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    setattr(handler, _MARK, True)
    buffer.setTarget(handler)
    buffer.flush()
    for name in _LOGGERS:
        target = logging.getLogger(name)
        target.removeHandler(buffer)
        target.addHandler(handler)


def teardown_logging() -> None:
    """Remove and close the CLI's handlers (main() may run more than once in one process, e.g. in tests)."""
    logging.captureWarnings(False)
    logging.getLogger("torchpqt").setLevel(logging.NOTSET)
    for name in _LOGGERS:
        target = logging.getLogger(name)
        for handler in [h for h in target.handlers if getattr(h, _MARK, False)]:
            target.removeHandler(handler)
            handler.close()
        target.propagate = True


def _values(tensor: Any) -> Any:
    if isinstance(tensor, torch.Tensor):
        flat = tensor.detach().to(torch.float64).flatten().tolist()
        return flat[0] if len(flat) == 1 else flat
    return tensor


def fake_quantize_ranges(qmodel: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {levels, input_low, input_high, output_low, output_high}}`` of every FakeQuantize."""
    from torchpqt.quant.fake_quantize import FakeQuantize

    ranges = {}
    for name, module in qmodel.named_modules():
        if isinstance(module, FakeQuantize):
            fields = ("input_low", "input_high", "output_low", "output_high")
            ranges[name] = {"levels": int(module.levels), **{f: _values(getattr(module, f)) for f in fields}}
    return ranges


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return _values(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


def write_report(path: Path, **sections: Any) -> None:
    """Write report.json; dataclasses (the export report, the config) become objects, the rest strings."""
    path.write_text(json.dumps(_jsonable(sections), indent=2, allow_nan=True) + "\n", encoding="utf-8")


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
