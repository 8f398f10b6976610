"""Calibration data sources: what each item looks like, lazily loaded and checked against the model input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchpqt.cli.config import EngineSection, InputSpec
from torchpqt.cli.data import open_data_source
from torchpqt.cli.images import _crop, _resize, guess_layout, load_image
from torchpqt.errors import CliError

SHAPE = (1, 3, 4, 4)


def _engine(source: str, folder: Path, **options) -> EngineSection:
    return EngineSection(data_source=source, base_dir=folder, **options)


def test_npy_gives_one_batch_1_float32_sample_per_row(tmp_path):
    array = np.arange(2 * 3 * 4 * 4, dtype=np.float64).reshape(2, 3, 4, 4)
    np.save(tmp_path / "d.npy", array)
    data = open_data_source(_engine("d.npy", tmp_path), (InputSpec(shape=SHAPE),), ["x"])
    assert len(data) == 2
    assert data[1].shape == SHAPE and data[1].dtype == torch.float32
    torch.testing.assert_close(data[1], torch.from_numpy(array[1:2]).float())


def test_npy_rows_with_batch_axis_and_declared_dtype(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(12).reshape(3, 1, 4))
    data = open_data_source(_engine("ids.npy", tmp_path), (InputSpec(shape=(1, 4), dtype="int32"),), ["ids"])
    assert [tuple(t.shape) for t in data] == [(1, 4)] * 3
    assert data[0].dtype == torch.int32


def test_npy_without_declared_shape_adds_the_batch_axis(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((5, 7), np.int16))
    data = open_data_source(_engine("d.npy", tmp_path), (), [])
    assert data[0].shape == (1, 7) and data[0].dtype == torch.int64


def test_npz_items_are_tuples_in_forward_order(tmp_path):
    np.savez(tmp_path / "d.npz", y=np.ones((3, 4), np.float32), x=np.zeros((3, 8), np.float32))
    data = open_data_source(_engine("d.npz", tmp_path), (), ["x", "y"])
    x, y = data[2]
    assert x.shape == (1, 8) and y.shape == (1, 4) and float(y.sum()) == 4.0


def test_npz_with_different_sample_counts(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 8)), y=np.zeros((2, 4)))
    with pytest.raises(CliError, match="different or zero sample counts"):
        open_data_source(_engine("d.npz", tmp_path), (), ["x", "y"])


def test_folder_of_npy_files_sorted_by_name(tmp_path):
    for name, value in (("b.npy", 2.0), ("a.npy", 1.0), ("c.npy", 3.0)):
        np.save(tmp_path / name, np.full((3, 4, 4), value, np.float32))
    (tmp_path / "notes.txt").write_text("ignored")
    data = open_data_source(_engine(".", tmp_path), (InputSpec(shape=SHAPE),), ["x"])
    assert [float(t.mean()) for t in data] == [1.0, 2.0, 3.0]


def test_callable_generator_is_materialized_and_arrays_become_tensors(tmp_path):
    (tmp_path / "gen.py").write_text(
        "import numpy as np\n"
        "def samples():\n"
        "    for i in range(3):\n"
        "        yield np.full((1, 2), i, np.float32)\n")
    data = open_data_source(_engine("gen.py:samples", tmp_path), (), [])
    items = list(data)
    assert len(data) == 3 and len(list(data)) == 3  # re-iterable although the source was a generator
    assert all(isinstance(t, torch.Tensor) for t in items)
    assert [float(t[0, 0]) for t in items] == [0.0, 1.0, 2.0]


def test_callable_from_an_importable_module(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text("import torch\ndef get():\n    return [torch.ones(1, 2)] * 2\n")
    elsewhere = tmp_path / "configs"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)  # importable from the current directory, not from the config folder
    data = open_data_source(_engine("mydata:get", elsewhere), (), [])
    assert len(data) == 2


@pytest.mark.parametrize("shape,layout", [((1, 3, 8, 8), "NCHW"), ((1, 8, 8, 3), "NHWC"), ((3, 8, 8), "CHW"),
                                          ((8, 8, 1), "HWC")])
def test_guess_layout_like_pot(shape, layout):
    assert guess_layout(shape) == layout


def test_guess_layout_fails_without_a_colour_axis():
    with pytest.raises(CliError, match="engine.layout"):
        guess_layout((1, 4, 8, 8))


def test_crop_like_pot():
    image = np.arange(10 * 8).reshape(10, 8, 1)
    cropped = _crop(image, 0.5)  # int(10 * .5) x int(8 * .5), offsets (10 - 5) // 2, (8 - 4) // 2
    assert cropped.shape == (5, 4, 1)
    assert cropped[0, 0, 0] == image[2, 2, 0]


def test_resize_half_pixel_bilinear():
    image = np.array([[0, 100], [100, 200]], np.uint8)[:, :, None]
    up = _resize(image, 4, 4)[:, :, 0]
    # half-pixel centres: output pixel 1 samples input x = 0.25 -> 25; corners replicate the edge
    np.testing.assert_array_equal(up[0], [0, 25, 75, 100])
    np.testing.assert_array_equal(_resize(image, 2, 2)[:, :, 0], image[:, :, 0])


def test_image_folder_resized_bgr_normalized(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    rgb = np.zeros((6, 10, 3), np.uint8)
    rgb[..., 0] = 200  # red
    image_module.fromarray(rgb).save(tmp_path / "a.png")
    engine = _engine(".", tmp_path, mean=(0.0, 0.0, 100.0), scale=(2.0,))
    data = open_data_source(engine, (InputSpec(shape=SHAPE),), ["x"])
    sample = data[0]
    assert sample.shape == SHAPE
    # BGR like OpenCV: red is the last channel; then (x - mean) / scale
    torch.testing.assert_close(sample[0, :, 0, 0], torch.tensor([0.0, 0.0, 50.0]))


def test_load_image_rejects_a_layout_that_does_not_fit(tmp_path):
    with pytest.raises(CliError, match="does not fit"):
        load_image(tmp_path / "a.png", (1, 3, 4, 4), _engine(".", tmp_path, layout="CHW"))
