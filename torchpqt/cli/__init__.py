"""``torchpqt``: POT's ``pot -c config.json`` for PyTorch models (see :mod:`torchpqt.cli.main`).

Modules: ``main`` (arguments, the run, exit codes), ``config`` (the CLI config file's sections), ``jsonc``
(JSON with comments), ``model`` (loading the model and any user callable), ``data`` (calibration data
sources), ``images`` (image folders), ``output`` (output folders, report, torch dump), ``logging`` (the
CLI's log handlers).
"""

from torchpqt.cli.main import QUICK_TEMPLATE, build_parser, main

__all__ = ["QUICK_TEMPLATE", "build_parser", "main"]
