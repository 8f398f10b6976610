"""Images as calibration samples, the way POT's simplified engine (``data_loaders/image_loader.py``) read them.

POT read with OpenCV (BGR, uint8), optionally cropped a central fraction, resized to the model's HxW with
bilinear interpolation, and did no normalization. We read with Pillow (optional dependency), keep BGR by
default, resize with half-pixel bilinear (what ``cv2.resize`` INTER_LINEAR does, without antialiasing) and
round back to uint8 values; ``mean``/``scale`` are an addition for models without built-in normalization.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torchpqt.cli.config import EngineSection
from torchpqt.errors import CliError

__all__ = ["IMAGE_SUFFIXES", "guess_layout", "load_image"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def guess_layout(shape: tuple[int, ...]) -> str:
    """POT's guess (``ImageLoader.get_layout``): the axis of size 1 or 3 is the channel axis.

    Raises:
        CliError: no axis looks like a colour axis.
    """
    if len(shape) == 4 and shape[1] in (1, 3):
        return "NCHW"
    if len(shape) == 4 and shape[3] in (1, 3):
        return "NHWC"
    if len(shape) == 3 and shape[0] in (1, 3):
        return "CHW"
    if len(shape) == 3 and shape[2] in (1, 3):
        return "HWC"
    raise CliError(f"cannot tell the channel axis of input shape {list(shape)}; set engine.layout "
                   "(NCHW, NHWC, CHW or HWC)")


def _read(path: Path, grayscale: bool, bgr: bool) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as exc:
        raise CliError(f"'engine.data_source': '{path.parent}' holds images, but Pillow is not installed; "
                       "run `pip install pillow`, or save the samples as .npy files") from exc
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L" if grayscale else "RGB"))
    except OSError as exc:
        raise CliError(f"'engine.data_source': cannot read image '{path}' ({exc}); remove or replace it") from exc
    if grayscale:
        return pixels[:, :, None]
    return pixels[:, :, ::-1] if bgr else pixels  # OpenCV's imread gives BGR, and POT fed that


def _crop(pixels: np.ndarray, fraction: float) -> np.ndarray:
    # POT: data_loaders/utils.py::crop, integer sizes, offsets floored
    height, width = pixels.shape[:2]
    dst_h, dst_w = int(height * fraction), int(width * fraction)
    top, left = (height - dst_h) // 2, (width - dst_w) // 2
    return pixels[top : top + dst_h, left : left + dst_w]


def _resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    if pixels.shape[:2] == (height, width):
        return pixels.astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].to(torch.float32)
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    # cv2.resize on uint8 returns uint8: round and saturate like it does
    return y[0].permute(1, 2, 0).round().clamp(0, 255).numpy()


def _normalize(pixels: np.ndarray, engine: EngineSection, channels: int) -> np.ndarray:
    for key, values in (("mean", engine.mean), ("scale", engine.scale)):
        if values is not None and len(values) not in (1, channels):
            raise CliError(f"'engine.{key}' has {len(values)} values; give 1 or {channels} (one per channel)")
    if engine.mean is not None:
        pixels = pixels - np.asarray(engine.mean, dtype=np.float32)
    if engine.scale is not None:
        pixels = pixels / np.asarray(engine.scale, dtype=np.float32)
    return pixels


def load_image(path: Path, shape: tuple[int, ...], engine: EngineSection) -> np.ndarray:
    """One image as a float32 array in the model input's layout (batch axis included if the layout has N).

    Raises:
        CliError: Pillow is missing, the image is unreadable, or the layout does not fit the input shape.
    """
    layout = engine.layout or guess_layout(shape)
    if len(layout) != len(shape):
        raise CliError(f"'engine.layout' {layout} does not fit the input shape {list(shape)}; "
                       "use a layout with one letter per axis")
    dims = dict(zip(layout, shape))
    if dims["C"] not in (1, 3):
        raise CliError(f"the model input has {dims['C']} channels in layout {layout}; images give 1 or 3, "
                       "so set engine.layout correctly or use .npy samples")
    pixels = _read(path, grayscale=dims["C"] == 1, bgr=engine.color_order == "BGR")
    if engine.central_fraction is not None:
        pixels = _crop(pixels, engine.central_fraction)
    pixels = _normalize(_resize(pixels, dims["H"], dims["W"]), engine, dims["C"])
    chw = layout.replace("N", "")
    array = pixels.transpose(["HWC".index(axis) for axis in chw]).astype(np.float32)
    return array[None] if "N" in layout else array
