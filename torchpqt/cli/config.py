"""The CLI's config file: a POT-shaped JSON (``model``, ``engine``, ``compression``) adapted to torch.

This module checks the *shape* of the file (known keys, value types) and resolves nothing on disk;
the DefaultQuantization ``params`` are validated by ``DefaultQuantizationConfig.from_pot_cli``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchpqt.errors import CliError

__all__ = ["DTYPES", "CliConfig", "EngineSection", "InputSpec", "ModelSection", "parse_config"]

logger = logging.getLogger("torchpqt")

# POT's CLI (configs/config.py) reads these four keys from `compression`, not from `params`.
COMPRESSION_KEYS = ("target_device", "model_type", "inplace_statistics", "dump_intermediate_model")
MODEL_KEYS = ("model_name", "model", "weights", "example_input_shape", "inputs")
INPUT_KEYS = ("name", "shape", "dtype")
ENGINE_KEYS = ("type", "data_source", "layout", "mean", "scale", "central_fraction", "color_order",
               "stat_requests_number", "eval_requests_number")
LAYOUTS = ("NCHW", "NHWC", "CHW", "HWC")
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


@dataclass(frozen=True)
class InputSpec:
    """One model input as the config declares it; ``None`` fields are taken from the model or data."""

    name: str | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None


@dataclass(frozen=True)
class ModelSection:
    """``model``: where the nn.Module comes from and what its inputs look like."""

    name: str
    source: str
    weights: str | None
    inputs: tuple[InputSpec, ...]
    base_dir: Path


@dataclass(frozen=True)
class EngineSection:
    """``engine`` (simplified only): the calibration data source and image preprocessing."""

    data_source: str
    base_dir: Path
    layout: str | None = None
    mean: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    central_fraction: float | None = None
    color_order: str = "BGR"


@dataclass(frozen=True)
class CliConfig:
    """The whole file, checked; ``raw`` is the parsed JSON as written (for the report)."""

    model: ModelSection
    engine: EngineSection
    compression: dict[str, Any]
    params: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @property
    def target_device(self) -> str:
        return str(self.compression.get("target_device", "ANY"))


def _section(raw: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        raise CliError(f"the config has no '{key}' section; add \"{key}\": {{...}} (see "
                       "examples/configs/default_quantization_template.json)")
    _check_keys(value, key, allowed)
    return dict(value)


def _check_keys(value: Any, path: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, Mapping):
        raise CliError(f"'{path or 'the config'}' must be a JSON object, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            where = f"'{path}'" if path else "the top level"
            full = f"{path}.{key}" if path else key
            raise CliError(f"unknown key '{full}'; allowed keys in {where}: {', '.join(allowed)}")


def _str(value: Any, path: str, example: str) -> str:
    if not isinstance(value, str) or not value:
        raise CliError(f"'{path}' must be a non-empty string like {example}, got {value!r}")
    return value


def _shape(value: Any, path: str) -> tuple[int, ...]:
    ok = isinstance(value, list) and value and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
    if not ok:
        raise CliError(f"'{path}' must be a list of positive integers like [1, 3, 224, 224], got {value!r}")
    return tuple(value)


def _floats(value: Any, path: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    if isinstance(value, list) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)
    raise CliError(f"'{path}' must be a number or a list of numbers (one per channel), got {value!r}")


def _input(value: Any, path: str) -> InputSpec:
    _check_keys(value, path, INPUT_KEYS)
    name = _str(value["name"], f"{path}.name", '"x"') if "name" in value else None
    shape = _shape(value["shape"], f"{path}.shape") if "shape" in value else None
    dtype = value.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise CliError(f"'{path}.dtype' is {dtype!r}; use one of {', '.join(DTYPES)}")
    return InputSpec(name, shape, dtype)


def _inputs(model: Mapping[str, Any]) -> tuple[InputSpec, ...]:
    if "example_input_shape" in model and "inputs" in model:
        raise CliError("'model.example_input_shape' and 'model.inputs' are both set; keep one of them")
    if "example_input_shape" in model:
        return (InputSpec(shape=_shape(model["example_input_shape"], "model.example_input_shape")),)
    value = model.get("inputs", [])
    if not isinstance(value, list):
        raise CliError(f"'model.inputs' must be a list of {{name, shape, dtype}} objects, got {value!r}")
    return tuple(_input(v, f"model.inputs[{i}]") for i, v in enumerate(value))


def default_model_name(source: str) -> str:
    """POT names the model after its file; for a factory ``pkg.mod:fn`` we use ``fn``."""
    if ":" in source and not source.endswith(".pt2"):
        return source.rpartition(":")[2]
    return Path(source).stem


def _model(raw: Mapping[str, Any], base_dir: Path) -> ModelSection:
    model = _section(raw, "model", MODEL_KEYS)
    if "model" not in model:
        raise CliError("'model.model' is missing; set it to \"package.module:factory\" or a .pt2 file")
    source = _str(model["model"], "model.model", '"examples/models.py:small_cnn" or "net.pt2"')
    name = model.get("model_name") or default_model_name(source)
    name = _str(name, "model.model_name", '"resnet18"')
    if any(sep in name for sep in "/\\") or name in (".", ".."):
        raise CliError(f"'model.model_name' is {name!r}; use a plain file name without path separators")
    weights = _str(model["weights"], "model.weights", '"weights.pt"') if "weights" in model else None
    return ModelSection(name, source, weights, _inputs(model), base_dir)


def _engine(raw: Mapping[str, Any], base_dir: Path, data_source: str | None) -> EngineSection:
    checker = [k for k in ("config", "launchers", "datasets") if isinstance(raw.get("engine"), Mapping)
               and k in raw["engine"]]
    if checker:
        raise CliError(f"'engine.{checker[0]}' configures POT's Accuracy Checker engine, which torchpqt does not "
                       "have; use \"type\": \"simplified\" with a \"data_source\"")
    engine = _section(raw, "engine", ENGINE_KEYS)
    for key in ("stat_requests_number", "eval_requests_number"):
        if key in engine:  # POT's async request counts: torch runs the calibration batches one by one
            logger.info("engine.%s is accepted for POT compatibility and ignored", key)
    kind = engine.get("type", "simplified")
    if kind != "simplified":
        raise CliError(f"'engine.type' is {kind!r}; torchpqt supports only \"simplified\" (no Accuracy "
                       "Checker): set \"type\": \"simplified\" and a \"data_source\"")
    source = engine.get("data_source", data_source)
    if source is None:
        raise CliError("'engine.data_source' is missing; set it in the config or pass --data SOURCE")
    layout = engine.get("layout")
    if layout is not None and layout not in LAYOUTS:
        raise CliError(f"'engine.layout' is {layout!r}; use one of {', '.join(LAYOUTS)}")
    color = engine.get("color_order", "BGR")
    if color not in ("BGR", "RGB"):
        raise CliError(f"'engine.color_order' is {color!r}; use \"BGR\" (POT/OpenCV) or \"RGB\"")
    fraction = engine.get("central_fraction")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise CliError(f"'engine.central_fraction' is {fraction!r}; use a number in (0, 1], e.g. 0.875")
    return EngineSection(
        data_source=_str(source, "engine.data_source", '"calib.npy" or "images/"'),
        base_dir=base_dir, layout=layout,
        mean=_floats(engine["mean"], "engine.mean") if "mean" in engine else None,
        scale=_floats(engine["scale"], "engine.scale") if "scale" in engine else None,
        central_fraction=None if fraction is None else float(fraction), color_order=color)


def _algorithm(compression: Mapping[str, Any]) -> dict[str, Any]:
    algos = compression.get("algorithms")
    if not isinstance(algos, list) or len(algos) != 1:
        raise CliError("'compression.algorithms' must be a list with exactly one entry, "
                       "[{\"name\": \"DefaultQuantization\", \"params\": {...}}]")
    _check_keys(algos[0], "compression.algorithms[0]", ("name", "params"))
    name = algos[0].get("name")
    if name != "DefaultQuantization":
        raise CliError(f"'compression.algorithms[0].name' is {name!r}; torchpqt implements only "
                       "\"DefaultQuantization\"")
    params = algos[0].get("params", {})
    if not isinstance(params, Mapping):
        raise CliError(f"'compression.algorithms[0].params' must be a JSON object, got {params!r}")
    return dict(params)


def parse_config(raw: Any, base_dir: Path, data_source: str | None = None) -> CliConfig:
    """Check a parsed config file and split it into its sections.

    Args:
        raw: the parsed JSON.
        base_dir: folder that relative paths in the file are relative to (the file's folder).
        data_source: ``--data`` from the command line, used when ``engine.data_source`` is absent.

    Raises:
        CliError: a section is missing, a key is unknown, or a value has the wrong type.
    """
    _check_keys(raw, "", ("model", "engine", "compression"))
    if "engine" not in raw and data_source is not None:
        raw = {**raw, "engine": {"type": "simplified", "data_source": data_source}}
    compression = _section(raw, "compression", (*COMPRESSION_KEYS, "algorithms"))
    params = _algorithm(compression)
    compression.pop("algorithms")
    return CliConfig(_model(raw, base_dir), _engine(raw, base_dir, data_source), compression, params,
                     dict(raw))
