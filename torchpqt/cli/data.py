"""Calibration data sources of the CLI's simplified engine.

``engine.data_source`` is one of: a ``.npy`` file (N x sample shape), a ``.npz`` file (one array per
input name, N samples each), a folder of ``.npy`` files (one sample each) or of images (needs Pillow),
or ``package.module:callable`` / ``file.py:callable`` returning an iterable of model inputs.
Array sources yield one sample per item with batch dimension 1, like POT's ``stat_batch_size: 1``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchpqt.cli.config import EngineSection, InputSpec
from torchpqt.cli.images import IMAGE_SUFFIXES, load_image
from torchpqt.cli.model import call_user, is_callable_spec, load_callable, resolve_path
from torchpqt.errors import CliError

__all__ = ["Samples", "open_data_source", "to_tensor"]

logger = logging.getLogger("torchpqt")
KEY = "engine.data_source"


class Samples(Sequence):
    """A lazy, indexable calibration set: item ``i`` is loaded only when asked for."""

    def __init__(self, count: int, load: Callable[[int], Any], origin: str, kind: str = "arrays") -> None:
        self._count, self._load, self.origin, self.kind = count, load, origin, kind

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> Any:
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return self._load(index % self._count)


class _Converted:
    """Wraps a user iterable so NumPy arrays inside its items reach the model as tensors."""

    def __init__(self, data: Iterable[Any]) -> None:
        self._data = data

    def __iter__(self) -> Iterator[Any]:
        return (_arrays_to_tensors(item) for item in self._data)

    def __len__(self) -> int:
        return len(self._data)  # type: ignore[arg-type]  # only called when the user's data has a length


def _arrays_to_tensors(item: Any) -> Any:
    if isinstance(item, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(item))
    if isinstance(item, (tuple, list)):
        return type(item)(_arrays_to_tensors(v) for v in item)
    if isinstance(item, dict):
        return {k: _arrays_to_tensors(v) for k, v in item.items()}
    return item


def _dtype(array: np.ndarray, spec: InputSpec | None) -> torch.dtype:
    if spec is not None and spec.dtype:
        return getattr(torch, spec.dtype)
    if array.dtype == np.uint8 or np.issubdtype(array.dtype, np.floating):
        return torch.float32  # images and float64 arrays feed a float32 model, as POT's IR input did
    if np.issubdtype(array.dtype, np.integer):
        return torch.int64
    return torch.from_numpy(np.zeros(1, array.dtype)).dtype


def to_tensor(array: np.ndarray, spec: InputSpec | None, where: str) -> torch.Tensor:
    """One sample as a model input: the declared dtype, batch dimension 1, shape checked if known.

    Raises:
        CliError: the sample's shape differs from the declared input shape.
    """
    tensor = torch.from_numpy(np.array(array)).to(_dtype(array, spec))  # np.array: copy out of a mmap
    shape = spec.shape if spec is not None else None
    if shape is None or tensor.ndim == len(shape) - 1:
        tensor = tensor.unsqueeze(0)
    if shape is not None and tuple(tensor.shape) != shape:
        raise CliError(f"'{KEY}': {where} has shape {list(array.shape)}, which does not fit the model input "
                       f"shape {list(shape)}; fix the data or model.example_input_shape / model.inputs")
    return tensor


def _first(inputs: tuple[InputSpec, ...]) -> InputSpec | None:
    return inputs[0] if inputs else None


def _npy(path: Path, inputs: tuple[InputSpec, ...]) -> Samples:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CliError(f"'{KEY}': cannot read '{path}' as .npy ({exc}); save it with numpy.save") from exc
    if array.ndim < 1 or len(array) == 0:
        raise CliError(f"'{KEY}': '{path}' holds no samples; save an array of shape (N, *sample_shape)")
    return Samples(len(array), lambda i: to_tensor(array[i], _first(inputs), f"{path.name}[{i}]"), str(path))


def _npz_order(keys: list[str], names: list[str], path: Path) -> list[str]:
    order = [n for n in names if n in keys]
    if set(order) != set(keys) or order != names[: len(order)]:
        raise CliError(f"'{KEY}': the arrays in '{path}' are named {keys}, but the model inputs are {names}; "
                       "name one array per input, after the model's forward() arguments or model.inputs")
    return order


def _npz(path: Path, inputs: tuple[InputSpec, ...], names: list[str]) -> Samples:
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise CliError(f"'{KEY}': cannot read '{path}' as .npz ({exc}); save it with numpy.savez") from exc
    order = _npz_order(list(arrays), names, path)
    counts = {len(arrays[k]) for k in order}
    if len(counts) != 1 or 0 in counts:
        raise CliError(f"'{KEY}': the arrays in '{path}' hold different or zero sample counts "
                       f"({ {k: len(arrays[k]) for k in order} }); give every input the same N > 0")
    specs = {s.name: s for s in inputs if s.name}

    def load(i: int) -> tuple[torch.Tensor, ...]:
        return tuple(to_tensor(arrays[k][i], specs.get(k), f"{path.name}['{k}'][{i}]") for k in order)

    return Samples(counts.pop(), load, str(path))


def _folder(path: Path, engine: EngineSection, inputs: tuple[InputSpec, ...]) -> Samples:
    files = sorted(p for p in path.iterdir() if p.is_file())
    arrays = [p for p in files if p.suffix.lower() == ".npy"]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    spec = _first(inputs)
    if arrays:
        return Samples(len(arrays), lambda i: to_tensor(np.load(arrays[i], allow_pickle=False), spec,
                                                        arrays[i].name), str(path))
    if not images:
        raise CliError(f"'{KEY}': folder '{path}' has no .npy or image files; put one sample per file there")
    if spec is None or spec.shape is None:
        raise CliError(f"'{KEY}': '{path}' holds images; set model.example_input_shape (e.g. [1, 3, 224, 224]) "
                       "so they can be resized to the model's input")
    return Samples(len(images), lambda i: to_tensor(load_image(images[i], spec.shape, engine), spec,
                                                    images[i].name), str(path), kind="images")


def _from_callable(engine: EngineSection) -> Iterable[Any]:
    fn = load_callable(engine.data_source, engine.base_dir, KEY)
    data = call_user(fn, engine.data_source, KEY)
    if isinstance(data, (str, bytes, torch.Tensor, np.ndarray)) or not hasattr(data, "__iter__"):
        raise CliError(f"'{KEY}': {engine.data_source} returned {type(data).__name__}; return an iterable of "
                       "samples (a list of tensors, a DataLoader, a generator)")
    if iter(data) is data:
        data = list(data)  # a one-shot iterator: keep it, since the CLI reads the first sample twice
    return _Converted(data)


def open_data_source(engine: EngineSection, inputs: tuple[InputSpec, ...],
                     names: list[str]) -> Iterable[Any]:
    """Open ``engine.data_source`` as an iterable of model inputs (a tensor or a tuple per item).

    Args:
        engine: the checked ``engine`` section.
        inputs: the model's input specs (shape/dtype used to batch, cast and check samples).
        names: the model's input names in forward() order, for .npz files.

    Raises:
        CliError: the source does not exist, has an unsupported form, or its samples do not fit the model.
    """
    path = resolve_path(engine.data_source, engine.base_dir)
    if not path.exists() and is_callable_spec(engine.data_source):
        source: Iterable[Any] = _from_callable(engine)
    elif not path.exists():
        raise CliError(f"'{KEY}': '{path}' does not exist; give a .npy/.npz file, a folder, or "
                       "\"package.module:callable\" (paths are relative to the config file's folder)")
    elif path.is_dir():
        source = _folder(path, engine, inputs)
    elif path.suffix.lower() == ".npy":
        source = _npy(path, inputs)
    elif path.suffix.lower() == ".npz":
        source = _npz(path, inputs, names)
    else:
        raise CliError(f"'{KEY}': '{path.name}' is not a .npy/.npz file or a folder; convert the data to one")
    options = [k for k in ("layout", "mean", "scale", "central_fraction") if getattr(engine, k) is not None]
    if options and getattr(source, "kind", None) != "images":
        raise CliError(f"'engine.{options[0]}' applies to image folders only; remove it or preprocess the data")
    return source
