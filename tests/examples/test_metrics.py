"""The examples' metrics on hand-computed cases (the scripts' numbers are only as good as these)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str, module_name: str):
    """Import examples/<name>.py by path (the scripts import ``_common`` by name, as when run from examples/),
    without putting examples/ on sys.path, where its models.py and data.py would shadow the tests' own."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


common = _load("_common", "_common")
detection = _load("detection", "examples_detection")
CLASSES, mean_ap = detection.CLASSES, detection.mean_ap


def test_dice_by_hand():
    a = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    assert common.dice(a, b) == pytest.approx(2 * 1 / 4)
    assert common.dice(a, a) == 1.0
    assert common.dice(torch.zeros(3), torch.zeros(3)) == 1.0  # both empty: perfect


def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    assert common.box_iou(a, b)[0].tolist() == pytest.approx([1 / 7, 0.0, 1.0])


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    keep = common.nms(boxes, torch.tensor([0.5, 0.9, 0.7]), 0.5)
    assert keep.tolist() == [1, 2]


def test_sqnr_db_by_hand():
    ref = torch.tensor([1.0, -1.0, 1.0, -1.0])
    assert common.sqnr_db(ref, ref + 0.1) == pytest.approx(20.0)  # power 1 over noise 0.01


def test_mean_ap_by_hand():
    box = torch.tensor([0.0, 0.0, 10.0, 10.0])
    targets = [[(c, 0.0, 0.0, 10.0, 10.0)] for c in range(CLASSES)]
    perfect = [[(c, 0.9, box)] for c in range(CLASSES)]
    assert mean_ap(perfect, targets) == pytest.approx(1.0)
    # class 0 also gets a false positive ranked first: precision 1/2 at full recall -> AP 0.5
    far = torch.tensor([50.0, 50.0, 60.0, 60.0])
    with_fp = [[(0, 0.95, far), (0, 0.9, box)]] + perfect[1:]
    assert mean_ap(with_fp, targets) == pytest.approx((0.5 + CLASSES - 1) / CLASSES)
    # nothing found for class 0: AP 0
    assert mean_ap([[]] + perfect[1:], targets) == pytest.approx((CLASSES - 1) / CLASSES)
