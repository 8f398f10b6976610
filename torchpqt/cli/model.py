"""Load the user's model for the CLI: a factory ``package.module:callable`` / ``file.py:callable``,
or a ``.pt2`` file written by ``torch.export.save``; then optional state_dict weights."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from torchpqt.cli.config import InputSpec, ModelSection
from torchpqt.errors import CliError

__all__ = ["call_user", "forward_arg_names", "is_callable_spec", "load_callable", "load_model", "resolve_path"]

logger = logging.getLogger("torchpqt")


def resolve_path(value: str, base_dir: Path) -> Path:
    """A path from the config: absolute as is, relative to the config file's folder otherwise."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


@contextlib.contextmanager
def _extra_sys_path(folders: list[Path]) -> Iterator[None]:
    # Temporary, so the user's folders do not shadow other imports after loading.
    added = [str(f) for f in folders if str(f) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            if entry in sys.path:
                sys.path.remove(entry)


def _import_file(path: Path, key: str) -> Any:
    if not path.is_file():
        raise CliError(f"'{key}': file '{path}' does not exist; paths are relative to the config file's folder")
    name = f"_torchpqt_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    with _extra_sys_path([path.parent]):
        spec.loader.exec_module(module)
    return module


def _import(target: str, base_dir: Path, key: str) -> Any:
    if target.endswith(".py") or "/" in target or "\\" in target:
        return _import_file(resolve_path(target, base_dir), key)
    with _extra_sys_path([base_dir, Path.cwd()]):
        try:
            return importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise CliError(f"'{key}': cannot import module '{target}' ({exc}); make it importable from the "
                           "config file's folder or the current directory, or write 'file.py:callable'") from exc


def is_callable_spec(spec: str) -> bool:
    """Whether ``spec`` is written ``package.module:callable`` or ``path/file.py:callable`` (not a drive letter
    such as ``C:data``)."""
    target, sep, attr = spec.rpartition(":")
    return bool(sep and target and attr.isidentifier() and len(target) > 1)


def load_callable(spec: str, base_dir: Path, key: str) -> Callable[..., Any]:
    """Resolve ``package.module:callable`` or ``path/file.py:callable``.

    Raises:
        CliError: bad syntax, the module cannot be imported (or raises on import), or no such callable.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise CliError(f"'{key}' is {spec!r}; write \"package.module:callable\" or \"file.py:callable\"")
    try:
        module = _import(target, base_dir, key)
    except CliError:
        raise
    except Exception as exc:  # the user's module failed while importing: a bad invocation, not our bug
        raise CliError(f"'{key}': importing '{target}' raised {type(exc).__name__}: {exc}; fix that module") from exc
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise CliError(f"'{key}': '{target}' has no callable '{attr}'; check the name after ':'")
    return obj


def call_user(fn: Callable[..., Any], spec: str, key: str) -> Any:
    """Call a user factory; anything it raises becomes a CliError naming the config key."""
    try:
        return fn()
    except Exception as exc:
        raise CliError(f"'{key}': {spec} raised {type(exc).__name__}: {exc}; fix the callable "
                       "(it is called without arguments)") from exc


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    # torch.export.load logs a traceback to stderr before raising; our one-line error says it all.
    target = logging.getLogger(name)
    level = target.level
    target.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        target.setLevel(level)


def _load_pt2(path: Path) -> tuple[torch.nn.Module, tuple[Any, ...]]:
    if not path.is_file():
        raise CliError(f"'model.model': file '{path}' does not exist; paths are relative to the config "
                       "file's folder")
    try:
        with _quiet("torch.export"):
            program = torch.export.load(str(path))
    except Exception as exc:
        raise CliError(f"'model.model': cannot load '{path}' with torch.export.load ({type(exc).__name__}: "
                       f"{exc}); save it with torch.export.save") from exc
    args = program.example_inputs[0] if program.example_inputs else ()
    return program.module(), tuple(args)


def _load_weights(module: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise CliError(f"'model.weights': file '{path}' does not exist; paths are relative to the config "
                       "file's folder")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CliError(f"'model.weights': cannot read '{path}' as a state_dict ({type(exc).__name__}); save "
                       "it with torch.save(model.state_dict(), path)") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the usual training-checkpoint wrapper
    try:
        module.load_state_dict(state)
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise CliError(f"'model.weights': '{path}' does not fit the model ({' '.join(first[:3])[:300]}); "
                       "use the state_dict saved from this architecture") from exc


def forward_arg_names(module: torch.nn.Module) -> list[str]:
    """Names of the positional parameters of ``module.forward`` (no *args/**kwargs)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in kinds]


def _resolve_inputs(declared: tuple[InputSpec, ...], example: tuple[Any, ...],
                    module: torch.nn.Module) -> tuple[InputSpec, ...]:
    names = forward_arg_names(module)
    count = max(len(declared), len(example))
    specs = []
    for i in range(count):
        spec = declared[i] if i < len(declared) else InputSpec()
        ex = example[i] if i < len(example) and isinstance(example[i], torch.Tensor) else None
        specs.append(InputSpec(
            name=spec.name or (names[i] if i < len(names) else None),
            shape=spec.shape or (tuple(ex.shape) if ex is not None else None),
            dtype=spec.dtype or (str(ex.dtype).removeprefix("torch.") if ex is not None else None)))
    return tuple(specs)


def load_model(section: ModelSection) -> tuple[torch.nn.Module, tuple[InputSpec, ...]]:
    """Build the model the ``model`` section names, in eval mode, and its resolved input specs.

    Raises:
        CliError: the file or factory is missing, raises, returns no nn.Module, or the weights do not fit.
    """
    example: tuple[Any, ...] = ()
    if section.source.endswith(".pt2"):
        module, example = _load_pt2(resolve_path(section.source, section.base_dir))
    else:
        factory = load_callable(section.source, section.base_dir, "model.model")
        module = call_user(factory, section.source, "model.model")
        if not isinstance(module, torch.nn.Module):
            raise CliError(f"'model.model': {section.source} returned {type(module).__name__}, not a "
                           "torch.nn.Module; return the model from the factory")
    if section.weights is not None:
        _load_weights(module, resolve_path(section.weights, section.base_dir))
    if not section.source.endswith(".pt2"):
        module.eval()  # an exported program is already in eval form, and its module refuses .eval()
    inputs = _resolve_inputs(section.inputs, example, module)
    logger.info("Loaded model '%s' from %s (%d inputs)", section.name, section.source, len(inputs))
    return module, inputs
