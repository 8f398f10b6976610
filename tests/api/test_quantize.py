"""prepare / convert / quantize end to end on small torch models."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchpqt
from torchpqt.errors import TorchPQTError

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "golden_ranges.json").read_text())["end_to_end_tiny_cnn"]


def _tiny_cnn():
    """The spec's end-to-end recipe (golden_ranges.json, end_to_end_tiny_cnn)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32)
    b1 = (rng.standard_normal((1, 4, 1, 1)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((2, 4, 1, 1)) * 0.5).astype(np.float32)
    b2 = (rng.standard_normal((1, 2, 1, 1)) * 0.1).astype(np.float32)
    samples = [(rng.standard_normal((3, 8, 8)) * 2 + 0.3).astype(np.float32) for _ in range(10)]
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        for conv, w, b in ((model[0], w1, b1), (model[2], w2, b2)):
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(b).flatten())
    return model.eval(), [torch.from_numpy(s)[None] for s in samples]


# POT names the convs conv1/conv2; torchpqt names FakeQuantize modules after the torch module paths.
_NAMES = {"conv1": "0", "conv2": "2"}


def _fqs(qmodel):
    return {n: m for n, m in qmodel.named_modules() if isinstance(m, torchpqt.FakeQuantize)}


@pytest.mark.parametrize("run", list(GOLDEN["runs"]))
def test_tiny_cnn_fake_quantize_ranges_match_pot(run):
    model, data = _tiny_cnn()
    expected = GOLDEN["runs"][run]
    fqs = _fqs(torchpqt.quantize(model, data, expected["config"], progress=False))
    assert len(fqs) == len(expected["fake_quantize"])
    for pot_name, want in expected["fake_quantize"].items():
        conv, point = pot_name.split("/")
        fq = fqs[f"{_NAMES[conv]}__{point}"]
        assert fq.levels == want["levels"]
        for key, attr in (("il", "input_low"), ("ih", "input_high"), ("ol", "output_low"), ("oh", "output_high")):
            got = getattr(fq, attr).detach().double().numpy().ravel()
            np.testing.assert_allclose(got, want[key], rtol=1e-5, atol=1e-7, err_msg=f"{run} {pot_name} {key}")


def _bias_of(qmodel, module: str):
    """The bias the converted model computes ``module``'s conv with (a corrected bias is a new constant)."""
    from torchpqt.algorithms.layers import layer_of
    from torchpqt.graph.ops import module_path

    for node in qmodel.graph.nodes:
        layer = layer_of(qmodel, node)
        if layer is not None and module_path(node) == module:
            return layer.bias
    raise KeyError(module)


@pytest.mark.parametrize("run", list(GOLDEN["runs"]))
def test_tiny_cnn_corrected_biases_match_pot(run):
    model, data = _tiny_cnn()
    expected = GOLDEN["runs"][run]
    q = torchpqt.quantize(model, data, expected["config"], progress=False)
    for conv, want in expected["bias_after"].items():  # the recipe's notes: OpenVINO f32 inference, atol ~1e-5
        got = _bias_of(q, _NAMES[conv]).detach().double().numpy().ravel()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"{run} {conv} bias")


def test_saturation_fix_stores_half_weights_and_output_is_close_to_fp32():
    model, data = _tiny_cnn()
    q = torchpqt.quantize(model, data, {"target_device": "CPU"}, progress=False)
    scaled = [p for n, p in q.named_parameters() if n.endswith("_scaled_weight")]
    assert len(scaled) == 1
    torch.testing.assert_close(scaled[0] * 2, model[0].weight)
    x = torch.cat(data)
    err = (q(x) - model(x)).abs().mean() / model(x).abs().mean()
    assert 0 < err < 0.05


def test_two_runs_give_bitwise_identical_parameters_and_user_model_is_untouched():
    model, data = _tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = torchpqt.quantize(model, data, {"preset": "mixed"}, progress=False)
    b = torchpqt.quantize(model, data, {"preset": "mixed"}, progress=False)
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(ta, tb), na
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def _storages(module: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()] if t.numel()}


def test_quantize_shares_no_tensor_with_the_user_model_and_prepare_copies():
    """quantize() captures the model's own tensors (no copy of the weights until convert copies the graph); the
    result owns its tensors, so training the user's model afterwards leaves it as it was. A prepared model handed
    to the user holds copies (the user may change the model before convert)."""
    model, data = _tiny_cnn()
    user = _storages(model)
    q = torchpqt.quantize(model, data, {"preset": "performance"}, progress=False)
    assert not _storages(q) & user
    x = torch.randn(2, 3, 8, 8)
    out = q(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(q(x), out)
    prepared = torchpqt.prepare(model, data[0], {"preset": "performance"})
    assert not _storages(prepared) & user


def test_prepare_calibrate_convert_equals_quantize():
    model, data = _tiny_cnn()
    prepared = torchpqt.prepare(model, data[0], {"preset": "performance"})
    with torch.no_grad():
        for x in data:
            prepared(x)
    manual = torchpqt.convert(prepared)
    oneshot = torchpqt.quantize(model, data, {"preset": "performance"}, progress=False)
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(manual(x), oneshot(x))


def test_convert_without_calibration_is_a_clear_error():
    model, data = _tiny_cnn()
    with pytest.raises(TorchPQTError, match="calibration"):
        torchpqt.convert(torchpqt.prepare(model, data[0]))


def _samples_seen(qmodel_or_prepared):
    return [m.stats.num_batches for m in qmodel_or_prepared.modules() if hasattr(m, "stats")]


def test_stat_subset_size_counts_samples_not_batches_and_transform_fn():
    model, data = _tiny_cnn()
    batches = [(torch.cat(data[i:i + 4]), torch.zeros(4)) for i in (0, 4)]  # (inputs, labels), 4 samples each
    cfg = torchpqt.load_config({"stat_subset_size": 6, "stat_batch_size": 3})
    from torchpqt.calibration import calibration_batches

    got = list(calibration_batches(batches, cfg, transform_fn=lambda item: item[0]))
    assert [args[0].shape[0] for args, _ in got] == [3, 3]
    assert torch.equal(got[1][0][0], torch.cat(data[3:6]))
    q = torchpqt.quantize(model, batches, cfg, transform_fn=lambda item: item[0], progress=False)
    assert len(_fqs(q)) == 4


def test_shuffle_uses_pots_seeded_sample_of_indices():
    _, data = _tiny_cnn()
    cfg = torchpqt.load_config({"stat_subset_size": 4, "shuffle_data": True, "seed": 3})
    from torchpqt.calibration import calibration_batches

    picked = [args[0] for args, _ in calibration_batches(data, cfg)]
    random.seed(3)
    want = random.sample(range(len(data)), 4)  # POT: samplers/creator.py
    assert all(torch.equal(p, data[i]) for p, i in zip(picked, want))


def test_shuffle_of_an_unindexable_iterable_is_a_config_error():
    model, data = _tiny_cnn()
    with pytest.raises(torchpqt.ConfigError, match="shuffle_data"):
        torchpqt.quantize(model, iter(data), {"shuffle_data": True}, progress=False)


def test_quantized_model_survives_torch_save_and_load(tmp_path):
    model, data = _tiny_cnn()
    q = torchpqt.quantize(model, data, {"preset": "mixed"}, progress=False)
    torch.save(q, tmp_path / "q.pt")
    loaded = torch.load(tmp_path / "q.pt", weights_only=False)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), q(x))
    assert [p.name for p in loaded.torchpqt_plan.points] == [p.name for p in q.torchpqt_plan.points]
    assert "fq_weights" in str(loaded.torchpqt_plan)
