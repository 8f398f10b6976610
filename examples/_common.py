"""Real photos for the examples and tests, from files that installed packages ship (nothing downloads).

The photos: scikit-learn's ``china.jpg`` (a temple) and ``flower.jpg`` (a flower), matplotlib's
``grace_hopper.jpg`` (a portrait in uniform). :func:`image_crops` cuts seeded random crops (a
random scale and aspect, optionally mirrored) and resizes them to 224×224; ``split="calibration"``
and ``split="evaluation"`` never share a crop. :func:`normalize`
applies ImageNet's mean and std.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "center_crops", "image_crops", "normalize", "photos"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SPLITS = ("calibration", "evaluation")
_SEED = 0


@functools.cache
def _photos() -> tuple[tuple[str, torch.Tensor], ...]:
    from matplotlib import cbook
    from PIL import Image
    from sklearn.datasets import load_sample_images

    sk = load_sample_images()
    images = [(name.rsplit("/", 1)[-1], np.asarray(img)) for name, img in zip(sk.filenames, sk.images)]
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        images.append(("grace_hopper.jpg", np.asarray(Image.open(f).convert("RGB"))))
    # HWC uint8 → CHW float in [0, 1]
    return tuple((name, torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255.0) for name, img in images)


def photos() -> dict[str, torch.Tensor]:
    """``{file name: CHW float tensor in [0, 1]}`` of the shipped photos (full size, not normalized)."""
    return {name: img.clone() for name, img in _photos()}


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalization of NCHW or CHW images in [0, 1]."""
    shape = (3, 1, 1)
    return (x - torch.tensor(IMAGENET_MEAN).view(shape)) / torch.tensor(IMAGENET_STD).view(shape)


def center_crops(size: int = 224) -> tuple[list[str], torch.Tensor]:
    """Each photo's largest centred square, resized to ``size``: names and a normalized NCHW batch."""
    names, out = [], []
    for name, img in _photos():
        h, w = img.shape[-2:]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        out.append(_resize(img[:, top:top + s, left:left + s], size))
        names.append(name)
    return names, normalize(torch.stack(out))


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def _boxes(count: int, shapes: list[tuple[int, int]]) -> list[tuple[int, int, int, int, int, bool]]:
    """(image index, top, left, height, width, mirrored) of ``count`` seeded crops covering 30-100 % of an image."""
    rng = np.random.default_rng(_SEED)
    boxes = []
    while len(boxes) < count:
        i = int(rng.integers(len(shapes)))
        h, w = shapes[i]
        area = rng.uniform(0.3, 1.0) * h * w
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = round(float(np.sqrt(area / aspect))), round(float(np.sqrt(area * aspect)))
        if ch > h or cw > w:
            continue
        boxes.append((i, int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw, bool(rng.integers(2))))
    return boxes


def image_crops(count: int, split: str = "calibration", size: int = 224) -> list[torch.Tensor]:
    """``count`` normalized crops, each a ``(1, 3, size, size)`` tensor; deterministic for a given split.

    One seeded stream of crops is dealt alternately to the two splits, so calibration and evaluation
    never share a crop and neither depends on how many crops the other asked for.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    images = [img for _, img in _photos()]
    boxes = _boxes(2 * count, [tuple(img.shape[-2:]) for img in images])[_SPLITS.index(split)::2]
    out = []
    for i, top, left, h, w, mirrored in boxes:
        crop = _resize(images[i][:, top:top + h, left:left + w], size)
        out.append(normalize(crop.flip(-1) if mirrored else crop)[None])
    return out
