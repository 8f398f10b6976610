"""The CLI's logging: records go to stdout and log.txt, so stderr carries only the one-line error
and the progress bar.

torch installs its own stderr handlers on its loggers (``torch``, ``torch.onnx``, ``torch.export``...);
while the CLI runs, those records are routed to our handlers too, and put back afterwards.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

__all__ = ["attach_log_file", "setup_logging", "teardown_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OURS = ("torchpqt", "py.warnings")
_MARK = "_torchpqt_cli"  # tags the CLI's handlers so that teardown removes only those
_moved: list[tuple[logging.Logger, logging.Handler]] = []  # torch's stderr handlers we took off


def _is_stderr(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
        sys.stderr, sys.__stderr__)


def _torch_loggers() -> list[logging.Logger]:
    names = [n for n in list(logging.root.manager.loggerDict) if n == "torch" or n.startswith("torch.")]
    loggers = [logging.getLogger(n) for n in names]
    return [lg for lg in loggers if any(_is_stderr(h) for h in lg.handlers)]


def _targets() -> list[logging.Logger]:
    return [logging.getLogger(n) for n in _OURS] + list(dict.fromkeys(lg for lg, _ in _moved))


def setup_logging(level: str) -> logging.handlers.MemoryHandler:
    """Log to stdout and buffer the records until the output folder exists, so log.txt gets them all."""
    logging.getLogger("torchpqt").setLevel(level)
    for lg in _torch_loggers():
        for handler in [h for h in lg.handlers if _is_stderr(h)]:
            lg.removeHandler(handler)
            _moved.append((lg, handler))
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    for handler in (stream, buffer):
        setattr(handler, _MARK, True)
    for target in _targets():
        target.addHandler(stream)
        target.addHandler(buffer)
        target.propagate = False
    logging.captureWarnings(True)  # Python warnings into the log, not onto stderr
    return buffer


def attach_log_file(buffer: logging.handlers.MemoryHandler, path: Path) -> None:
    """Start writing log.txt, including the records logged before the folder existed."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    setattr(handler, _MARK, True)
    buffer.setTarget(handler)
    buffer.flush()
    for target in _targets():
        target.removeHandler(buffer)
        target.addHandler(handler)


def teardown_logging() -> None:
    """Remove and close the CLI's handlers and give torch its own back (main() may run again in-process)."""
    logging.captureWarnings(False)
    logging.getLogger("torchpqt").setLevel(logging.NOTSET)
    closed: set[int] = set()
    for target in _targets():
        for handler in [h for h in target.handlers if getattr(h, _MARK, False)]:
            target.removeHandler(handler)
            if id(handler) not in closed:
                handler.close()
                closed.add(id(handler))
    for name in _OURS:
        logging.getLogger(name).propagate = True
    for lg, handler in _moved:
        lg.addHandler(handler)
    _moved.clear()
