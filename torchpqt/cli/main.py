"""``torchpqt``: POT's ``pot -c config.json`` for PyTorch models.

    torchpqt -c config.json [--output-dir DIR] [-d] [--log-level LEVEL] [--progress-bar]
             [--keep-uncompressed-weights] [--data SOURCE] [--report]
    torchpqt -q default --model SPEC --data SOURCE [--preset performance|mixed] [--name NAME]
             [--weights FILE] [--input-shape 1 3 224 224] [--statistics-cache PATH]
    torchpqt reproduce manifest.json --model SPEC --data SOURCE [--weights FILE] [--input-shape ...]

Exit codes: 0 done (reproduce: bit for bit); 3 reproduce: the run differs; 2 bad invocation (one line on stderr: ``torchpqt: error: ...``); 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

import torchpqt
from torchpqt.cli.config import CliConfig, parse_config
from torchpqt.cli.data import open_data_source
from torchpqt.cli.jsonc import read_jsonc
from torchpqt.cli.logging import attach_log_file, setup_logging, teardown_logging
from torchpqt.cli.model import forward_arg_names, load_model
from torchpqt.cli.output import fake_quantize_ranges, make_layout, save_torch_model, write_report
from torchpqt.config import DefaultQuantizationConfig
from torchpqt.errors import CliError, TorchPQTError
from torchpqt.inputs import split_inputs

__all__ = ["QUICK_TEMPLATE", "build_parser", "main"]

logger = logging.getLogger("torchpqt")

# Quick mode (-q default) uses this, the content of examples/configs/default_quantization_template.json
# (a test keeps the two equal); POT's -q read configs/templates/default_quantization_template.json.
QUICK_TEMPLATE: dict[str, Any] = {
    "target_device": "ANY",
    "algorithms": [{"name": "DefaultQuantization", "params": {"preset": "performance", "stat_subset_size": 300}}],
}
QUICK_ONLY = ("model", "weights", "name", "preset", "input_shape")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the usage block and exit; we want the one-line error of every other failure
        raise CliError(f"{message}; see `torchpqt --help`")


def build_parser() -> argparse.ArgumentParser:
    """The command line, POT's flags where they apply (``app/argparser.py``)."""
    p = _Parser(prog="torchpqt", description="Post-training 8-bit quantization of a PyTorch model "
                "(OpenVINO POT DefaultQuantization), written as an OpenVINO IR.", allow_abbrev=False)
    p.add_argument("-c", "--config", help="POT-style JSON config (comments allowed)")
    p.add_argument("-q", "--quantize", choices=["default"], help="quick mode with the default template")
    p.add_argument("-m", "--model", help="quick mode: package.module:factory, file.py:factory or a .pt2 file")
    p.add_argument("-w", "--weights", help="quick mode: a state_dict file for the model")
    p.add_argument("-n", "--name", help="quick mode: model name (output file names)")
    p.add_argument("--preset", choices=["performance", "mixed"], help="quick mode: quantization preset")
    p.add_argument("--input-shape", type=int, nargs="+", metavar="DIM", help="quick mode: e.g. 1 3 224 224")
    p.add_argument("--data", "--data-source", dest="data", help="calibration data when the config has none")
    p.add_argument("--output-dir", default="./results", help="default: ./results")
    p.add_argument("-d", "--direct-dump", action="store_true", help="save straight into --output-dir")
    p.add_argument("--log-level", default="INFO", choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"])
    p.add_argument("--progress-bar", action="store_true", help="show a progress bar even when stderr is no TTY")
    p.add_argument("--keep-uncompressed-weights", action="store_true", help="keep float weights in the IR")
    p.add_argument("--statistics-cache", metavar="PATH", help="reuse / store the calibration statistics in this file "
                   "(another preset, mode, bits, aggregator or ignored scope then needs no calibration pass)")
    p.add_argument("--report", action="store_true", help="also run the per-layer sensitivity analysis and "
                   "write report.html (plots: pip install 'torchpqt[report]') next to report.json")
    return p


def _check_mode(args: argparse.Namespace) -> None:
    if (args.config is None) == (args.quantize is None):
        raise CliError("give either -c/--config FILE or -q default --model SPEC --data SOURCE")
    quick = [f"--{k.replace('_', '-')}" for k in QUICK_ONLY if getattr(args, k) is not None]
    if args.config is not None and quick:
        raise CliError(f"{quick[0]} is a quick-mode option; with -c put it into the config file instead")
    if args.quantize is not None and (args.model is None or args.data is None):
        raise CliError("-q default needs --model SPEC and --data SOURCE")


def _quick_config(args: argparse.Namespace) -> dict[str, Any]:
    model: dict[str, Any] = {"model": args.model}
    for key, value in (("model_name", args.name), ("weights", args.weights),
                       ("example_input_shape", args.input_shape)):
        if value is not None:
            model[key] = value
    compression = {**QUICK_TEMPLATE, "algorithms": [dict(QUICK_TEMPLATE["algorithms"][0])]}
    params = dict(compression["algorithms"][0]["params"])
    if args.preset is not None:
        params["preset"] = args.preset
    compression["algorithms"][0]["params"] = params
    return {"model": model, "engine": {"type": "simplified", "data_source": args.data}, "compression": compression}


def load_cli_config(args: argparse.Namespace) -> CliConfig:
    """The checked config: the -c file (paths relative to it) or the quick-mode one (paths relative to cwd)."""
    if args.config is not None:
        path = Path(args.config)
        return parse_config(read_jsonc(path), path.resolve().parent, args.data)
    return parse_config(_quick_config(args), Path.cwd(), args.data)


def _example_inputs(data: Any, names: list[str]) -> tuple[Any, ...]:
    try:
        first = data[0] if isinstance(data, Sequence) else next(iter(data))
    except (StopIteration, IndexError):
        raise CliError("'engine.data_source' yields no samples; give at least one") from None
    unnamed = isinstance(first, dict) and not set(first) <= set(names)
    if unnamed or not isinstance(first, (torch.Tensor, tuple, list, dict)):
        raise CliError(f"'engine.data_source': a sample is a {type(first).__name__}; yield tensors, tuples of "
                       f"tensors, or dicts keyed by the forward() arguments {names}")
    args, kwargs = split_inputs(first)
    return (*args, *(kwargs[n] for n in names if n in kwargs))  # the exporter takes positional inputs


def _export(qmodel: torch.nn.Module, example: tuple[Any, ...], xml: Path, cfg: CliConfig, keep: bool) -> Any:
    try:
        from torchpqt.exporters import openvino as ov_export

        # ANY and CPU_SPR select POT's CPU rules; the check runs on the OpenVINO device of that name
        device = {"ANY": "CPU", "CPU_SPR": "CPU"}.get(cfg.target_device, cfg.target_device)
        return ov_export.export(qmodel, example, str(xml), target_device=device,
                                compress_weights=not keep, check=True)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("openvino", "onnx", "onnxscript"):
            raise CliError(f"exporting the IR needs '{exc.name}'; run `pip install torchpqt[openvino]`") from exc
        raise


def _tuning_section(qmodel) -> dict:
    """report.json's ``layerwise_tuning``: each tuned layer's held-out loss before/after (when it ran), and
    ``layerwise_tuning_model``: the whole-model guard's network-output loss before/after."""
    tuning = getattr(qmodel, "torchpqt_tuning", None)
    if tuning is None:
        return {}
    model = getattr(qmodel, "torchpqt_tuning_model", None)
    return {"layerwise_tuning": tuning, **({"layerwise_tuning_model": model} if model is not None else {})}


def _lint_section(check) -> dict:
    """report.json's ``int8_lint``: the FakeQuantize the CPU plugin keeps in f32, the int8 share, saturation."""
    lint = getattr(check, "lint", None)
    if lint is None:
        return {}
    return {"int8_lint": {"not_int8": [f.name for f in lint.unfused], "int8_share": lint.int8_share,
                          "f32_weighted_ops": lint.f32_weighted_ops, "saturates": lint.saturates, "isa": lint.isa,
                          "faster": lint.faster}}


def run(args: argparse.Namespace, buffer: logging.Handler) -> None:
    """Everything after argument parsing: config, model, data, quantize, export, report."""
    started = time.perf_counter()
    if args.report:
        from torchpqt.analysis.report import require_matplotlib

        require_matplotlib()  # before the work: a missing extra is a one-line error, not a lost run
    cfg = load_cli_config(args)
    qconfig = DefaultQuantizationConfig.from_pot_cli(cfg.compression, cfg.params)
    model, inputs = load_model(cfg.model)
    names = [s.name for s in inputs if s.name] or forward_arg_names(model)
    data = open_data_source(cfg.engine, inputs, names)
    example = _example_inputs(data, names)
    layout = make_layout(Path(args.output_dir), cfg.model.name, args.direct_dump)
    layout.ir_dir.mkdir(parents=True, exist_ok=True)
    attach_log_file(buffer, layout.log_dir / "log.txt")
    logger.info("Output folder: %s", layout.log_dir)

    t0 = time.perf_counter()
    analysis = None
    if args.report:  # quantizes once, then measures every FakeQuantize's cost on the first samples
        analysis = torchpqt.analyze(model, data, qconfig, example_inputs=example, target_device=qconfig.target_device,
                                    progress=args.progress_bar or sys.stderr.isatty(),
                                    statistics_cache=args.statistics_cache)
        qmodel = analysis.qmodel
    else:
        qmodel = torchpqt.quantize(model, data, qconfig, example_inputs=example,
                                   target_device=qconfig.target_device,
                                   progress=args.progress_bar or sys.stderr.isatty(),
                                   statistics_cache=args.statistics_cache)
    t1 = time.perf_counter()
    dump = save_torch_model(qmodel, example, layout.ir_dir, cfg.model.name).name \
        if qconfig.dump_intermediate_model else None
    t2 = time.perf_counter()
    check = _export(qmodel, example, layout.xml, cfg, args.keep_uncompressed_weights)
    t3 = time.perf_counter()
    timings = {"calibration": t1 - t0, "export": t3 - t2, "total": t3 - started}
    extra = {}
    if analysis is not None:
        from torchpqt.analysis.report import report_sections, write_html

        timings["calibration"] -= analysis.timings_s["analysis"]
        timings["analysis"] = analysis.timings_s["analysis"]
        extra = {k: v for k, v in report_sections(analysis).items() if k in ("analysis", "plan")}
        logger.info("Saved %s (most sensitive: %s)", write_html(analysis, layout.ir_dir, export_report=check),
                    analysis.ranking[0].fake_quantize if analysis.ranking else "none")
    write_report(layout.ir_dir / "report.json", ir=layout.xml.name, torch_model=dump,
                 config=cfg.raw, quantization_config=qconfig.to_dict(full=True), fake_quantize=fake_quantize_ranges(qmodel),
                 timings_s=timings, export_check=check, **_tuning_section(qmodel), **_lint_section(check), **extra)
    logger.info("Saved %s (calibration %.1f s, export %.1f s)", layout.xml, t1 - t0, t3 - t2)


def build_reproduce_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="torchpqt reproduce", description="Quantize again as a run manifest (manifest.json, written "
                "beside every IR) records, and check its statistics and FakeQuantize parameters bit for bit.",
                allow_abbrev=False)
    p.add_argument("manifest", help="the manifest.json beside the IR")
    p.add_argument("-m", "--model", required=True, help="package.module:factory, file.py:factory or a .pt2 file")
    p.add_argument("-w", "--weights", help="a state_dict file for the model")
    p.add_argument("--input-shape", type=int, nargs="+", metavar="DIM", help="e.g. 1 3 224 224")
    p.add_argument("--data", "--data-source", dest="data", required=True, help="the calibration data of the run")
    p.add_argument("--log-level", default="WARNING", choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"])
    return p


def reproduce(args: argparse.Namespace) -> int:
    """``torchpqt reproduce``: 0 when every recorded hash matches, 3 when not (the differences on stdout)."""
    quick = argparse.Namespace(model=args.model, name=None, weights=args.weights, input_shape=args.input_shape,
                               data=args.data, preset=None)
    cfg = parse_config(_quick_config(quick), Path.cwd(), args.data)
    model, inputs = load_model(cfg.model)
    names = [s.name for s in inputs if s.name] or forward_arg_names(model)
    data = open_data_source(cfg.engine, inputs, names)
    result = torchpqt.reproduce(args.manifest, model, data, example_inputs=_example_inputs(data, names))
    print(result)
    return 0 if result.matches else 3


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to sys.exit).

    Args:
        argv: the arguments without the program name; ``sys.argv[1:]`` when None.
    """
    debug = False
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["reproduce"]:
            args = build_reproduce_parser().parse_args(argv[1:])
            debug = args.log_level == "DEBUG"
            setup_logging(args.log_level)
            return reproduce(args)
        args = build_parser().parse_args(argv)
        debug = args.log_level == "DEBUG"
        _check_mode(args)
        buffer = setup_logging(args.log_level)
        run(args, buffer)
        return 0
    except TorchPQTError as exc:  # includes CliError: a bad invocation the user can fix
        if debug:
            traceback.print_exc()
        print(f"torchpqt: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchpqt: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (the last resort: a one-line message instead of a traceback)
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (rerun with --log-level DEBUG for the traceback)"
        print(f"torchpqt: error: unexpected {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
        return 1
    finally:
        teardown_logging()


if __name__ == "__main__":
    sys.exit(main())
