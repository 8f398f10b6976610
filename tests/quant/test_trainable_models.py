"""Trainable ranges on converted models: every FakeQuantize trains, saves, reloads and exports."""

import io

import pytest
import torch

import torchpqt
from tests import models
from torchpqt.quant.fake_quantize import FakeQuantize
from torchpqt.quant.trainable import freeze_ranges, named_trainable_ranges, train_ranges


def _quantized(name):
    model, data = models.build(name), models.calibration_data(name, 8)
    return torchpqt.quantize(model, data, progress=False), data


def _loss(qmodel, fp_model, data):
    out = [(qmodel(*d) if isinstance(d, tuple) else qmodel(d)) for d in data]
    ref = [(fp_model(*d) if isinstance(d, tuple) else fp_model(d)).detach() for d in data]
    return sum(torch.nn.functional.mse_loss(o, r) for o, r in zip(out, ref))


@pytest.mark.parametrize("name", ["tiny_cnn", "small_transformer"])
def test_every_range_of_a_converted_model_gets_a_gradient_and_reloads_bitwise(name):
    qmodel, data = _quantized(name)
    fqs = [n for n, m in qmodel.named_modules() if isinstance(m, FakeQuantize)]
    params = train_ranges(qmodel)
    assert [n for n, _ in named_trainable_ranges(qmodel)] == [f"{n}.log_scale" for n in fqs]
    fp_model = models.build(name)
    opt = torch.optim.Adam(params, lr=1e-2)
    exact = {}  # FakeQuantize whose output equals its input (e.g. a scalar constant at its range edge)

    def record(name):
        def hook(module, args, out):
            # "equal" to one float32 ulp: above mid-range the op's fma can be one ulp off (see its doc)
            exact[name] = exact.get(name, True) and torch.allclose(out, args[0], rtol=2**-23, atol=0)
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in qmodel.named_modules()
             if isinstance(m, FakeQuantize)]
    for step in range(3):
        opt.zero_grad()
        _loss(qmodel, fp_model, data[:4]).backward()
        if step == 0:
            for h in hooks:
                h.remove()
            silent = [n for n, p in named_trainable_ranges(qmodel)
                      if p.grad is None or not bool(p.grad.any())]
            # the STE gives no gradient where nothing is lost: all of those must be exact
            assert all(exact[n.rsplit(".", 1)[0]] for n in silent), f"no gradient reached {silent}"
            assert len(silent) <= 1
        opt.step()
    x = data[0]
    with torch.no_grad():
        y = qmodel(*x) if isinstance(x, tuple) else qmodel(x)
    buf = io.BytesIO()
    torch.save(qmodel.state_dict(), buf)
    buf.seek(0)
    fresh, _ = _quantized(name)  # the same structure rebuilt, with the untrained ranges
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        again = fresh(*x) if isinstance(x, tuple) else fresh(x)
    assert torch.equal(again, y)
    freeze_ranges(qmodel)
    ep = torch.export.export(qmodel, x if isinstance(x, tuple) else (x,))
    ops = [n for n in ep.graph.nodes if n.target == torch.ops.torchpqt.fake_quantize.default]
    assert len(ops) == len(fqs)


@pytest.mark.openvino
def test_trained_ranges_export_to_ir_with_the_check_passing(tmp_path):
    # every range trained, weights shifted too: their zero points stay integers, so the weights
    # compress to int8 and the IR agrees with the torch model
    pytest.importorskip("openvino")
    from torchpqt.exporters import openvino as ov_export

    qmodel, data = _quantized("tiny_cnn")
    fp_model = models.build("tiny_cnn")
    start = {n: m.input_low.clone() for n, m in qmodel.named_modules() if isinstance(m, FakeQuantize)}
    opt = torch.optim.Adam(train_ranges(qmodel, train_min=True), lr=3e-3)
    for _ in range(5):
        opt.zero_grad()
        _loss(qmodel, fp_model, data).backward()
        opt.step()
    trained = {n: [t.detach().clone() for t in m.ranges()] for n, m in qmodel.named_modules()
               if isinstance(m, FakeQuantize)}
    report = ov_export.export(freeze_ranges(qmodel), data[0], tmp_path / "m.xml")  # check=True: raises
    assert report.max_diff_steps is not None and report.max_diff_steps <= 2.0
    moved = [n for n, low in start.items() if not torch.equal(low, trained[n][0])]
    assert len(moved) >= 8  # all weight ranges and the signed input range were shifted
    for name, values in trained.items():  # the exported model holds the trained ranges
        assert all(torch.equal(a, b) for a, b in zip(qmodel.get_submodule(name).ranges(), values))
