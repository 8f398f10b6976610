"""Quantization-aware training of a converted model: what it holds, what trains, save/load, export."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import torchpqt
from tests import models
from torchpqt.quant.fake_quantize import FakeQuantize

ROOT = Path(__file__).resolve().parents[2]


def _conv_bn_relu_linear() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
    return model.eval()


def _data(n=8, shape=(1, 3, 8, 8), scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * scale for _ in range(n)]


def _read_targets(gm: torch.fx.GraphModule) -> set[str]:
    return {n.target for n in gm.graph.nodes if n.op == "get_attr"}


def _fqs(gm) -> dict[str, FakeQuantize]:
    return {n: m for n, m in gm.named_modules() if isinstance(m, FakeQuantize)}


def test_converted_model_holds_only_the_tensors_its_graph_reads_and_they_train():
    model = _conv_bn_relu_linear()
    q = torchpqt.quantize(model, _data(), progress=False)
    params = dict(q.named_parameters())
    # what the graph reads, from the graph itself: the folded bias, the (saturation-fixed) conv weight, the linear's
    assert set(params) == _read_targets(q)
    assert len(params) == 4
    assert not any(n.startswith(("0.", "1.")) for n in params), "the original conv / BatchNorm tensors are dead"
    assert not any(n.endswith("_bnfold_0") for n in params), "the intermediate folded weight is dead"
    assert all(p.requires_grad for p in params.values())
    fqs = _fqs(q)
    buffers = {n for n, _ in q.named_buffers()}
    assert buffers == {f"{m}.{r}" for m in fqs for r in ("input_low", "input_high", "output_low", "output_high")}
    assert not [n for n, _ in q.named_children() if not isinstance(getattr(q, n), FakeQuantize)
                and n not in {t.split(".")[0] for t in _read_targets(q)}]
    # the live conv weight is the folded one (stored W/2 by the saturation fix): BN scale times W
    bn = model[1]
    folded = model[0].weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(-1, 1, 1, 1)
    (scaled,) = [p for n, p in params.items() if n.endswith("_scaled_weight")]
    torch.testing.assert_close(scaled * 2, folded)
    # and an optimizer over qmodel.parameters() really changes the output
    x = torch.cat(_data())
    y0 = q(x).detach()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    q(x).square().mean().backward()
    opt.step()
    assert not torch.equal(q(x), y0)


def _loss(q, fp, data):
    x = torch.cat(data) if not isinstance(data[0], tuple) else data
    return (q(x) - fp(x).detach()).square().mean() + q(x).square().mean()


@pytest.mark.parametrize("name", ["tiny_cnn", "small_transformer"])
@pytest.mark.parametrize("preset", ["performance", "mixed"])
def test_gradients_reach_every_weight_and_every_range(name, preset):
    fp = models.build(name)
    data = models.calibration_data(name, 4)
    q = torchpqt.quantize(fp, data, {"preset": preset}, progress=False)
    ranges = torchpqt.train_ranges(q)
    assert len(ranges) >= len(_fqs(q))
    params = dict(q.named_parameters())
    assert {id(p) for p in ranges} <= {id(p) for p in params.values()}
    exact = {}  # FakeQuantize whose output equals its input (a scalar constant at its range edge)

    def record(name):
        def hook(module, args, out):
            exact[name] = exact.get(name, True) and torch.allclose(out, args[0], rtol=2**-23, atol=0)
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in q.named_modules() if isinstance(m, FakeQuantize)]
    _loss(q, fp, data).backward()
    for h in hooks:
        h.remove()
    no_grad = [n for n, p in params.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    # the straight-through estimator gives no gradient where the FakeQuantize loses nothing
    assert all(n.endswith("log_scale") and exact[n.rsplit(".", 1)[0]] for n in no_grad), no_grad
    assert len(no_grad) <= 1
    weights = [n for n, p in params.items() if not n.endswith(("log_scale", "min_shift"))]
    assert len(weights) >= len([m for m in _fqs(q) if "fq_weights" in m])


def test_a_too_narrow_range_widens_after_one_step():
    torch.manual_seed(0)
    fp = nn.Sequential(nn.Linear(4, 4)).eval()
    q = torchpqt.quantize(fp, _data(16, (1, 4)), progress=False)  # calibrated on N(0, 1)
    torchpqt.train_ranges(q)
    fq = q.get_submodule(next(n for n in _fqs(q) if "fq_input" in n))
    low0, high0 = (t.detach().clone() for t in fq.ranges()[:2])
    x = torch.cat(_data(64, (1, 4), scale=4.0, seed=1))  # the data is 4x wider: much of it clips
    opt = torch.optim.SGD(torchpqt.train_ranges(q), lr=0.01)
    (q(x) - fp(x).detach()).square().mean().backward()
    opt.step()
    low1, high1 = fq.ranges()[:2]
    assert bool((high1 > high0).all()) and bool((low1 < low0).all())


def test_symmetric_ranges_stay_symmetric_under_training():
    fp = models.build("tiny_cnn")
    data = models.calibration_data("tiny_cnn", 4)
    q = torchpqt.quantize(fp, data, {"preset": "performance"}, progress=False)
    torchpqt.train_ranges(q)
    assert not [n for n, _ in q.named_parameters() if n.endswith("min_shift")]  # nothing shifts a symmetric FQ
    start = {n: [t.clone() for t in m.ranges()] for n, m in _fqs(q).items()}
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        _loss(q, fp, data).backward()
        opt.step()
    moved = 0
    for name, m in _fqs(q).items():
        il, ih = (t.detach() for t in m.ranges()[:2])
        il0, ih0 = start[name][:2]
        moved += not torch.equal(ih, ih0)
        if "fq_weights" in name:
            assert torch.equal(il, -ih), name
        elif bool((il0 == 0).all()):
            assert bool((il == 0).all()), name
        else:  # signed activations keep il = -ih * L/(L-2): the zero point stays on its level
            torch.testing.assert_close(il / ih, il0 / ih0, rtol=1e-6, atol=0)
    assert moved >= len(start) // 2


def _train(q, fp, data, steps=3, lr=1e-2):
    torchpqt.train_ranges(q)
    opt = torch.optim.Adam(q.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        _loss(q, fp, data).backward()
        opt.step()
    return q


_FRESH = textwrap.dedent("""
    import sys, torch, torchpqt
    from tests import models
    name, state, config, out = sys.argv[1], sys.argv[2], eval(sys.argv[3]), sys.argv[4]
    x = torch.load(out + ".in", weights_only=True)
    q = torchpqt.load(state, models.build(name), models.example_input(name), config)
    with torch.no_grad():
        torch.save(q(x), out)
""")


@pytest.mark.parametrize("name,config", [("tiny_cnn", {"preset": "mixed"}),
                                         ("small_transformer", {"preset": "mixed", "model_type": "transformer"})])
def test_state_dict_reloads_in_a_fresh_process_bitwise(tmp_path, name, config):
    fp = models.build(name)
    data = models.calibration_data(name, 4)
    q = _train(torchpqt.quantize(fp, data, config, progress=False), fp, data)
    x = torch.cat(models.calibration_data(name, 3, seed=7))
    with torch.no_grad():
        y = q(x)
    torch.save(q.state_dict(), tmp_path / "q.pt")
    torch.save(x, tmp_path / "y.pt.in")
    subprocess.run([sys.executable, "-c", _FRESH, name, str(tmp_path / "q.pt"), repr(config), str(tmp_path / "y.pt")],
                   cwd=ROOT, check=True, timeout=300)
    again = torch.load(tmp_path / "y.pt", weights_only=True)
    assert again.dtype == y.dtype and torch.equal(again.view(torch.int32), y.view(torch.int32))


def test_load_into_another_config_raises_a_clear_error():
    fp = _conv_bn_relu_linear()
    q = torchpqt.quantize(fp, _data(), {"preset": "mixed"}, progress=False)
    with pytest.raises(torchpqt.TorchPQTError, match="torchpqt.load"):
        torchpqt.load(q.state_dict(), fp, _data(1)[0], {"preset": "mixed", "ignored": {"scope": ["4"]}})
    with pytest.raises(torchpqt.TorchPQTError, match="state_dict"):
        torchpqt.load([1, 2], fp, _data(1)[0])


def test_whole_module_save_load_keeps_training(tmp_path):
    fp = _conv_bn_relu_linear()
    data = _data()
    q = _train(torchpqt.quantize(fp, data, {"preset": "mixed"}, progress=False), fp, data)
    x = torch.cat(data)
    y = q(x).detach()
    torch.save(q, tmp_path / "q.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation on unpickling
        back = torch.load(tmp_path / "q.pt", weights_only=False)
    assert torch.equal(back(x), y)
    assert len(torchpqt.train_ranges(back)) == len(torchpqt.train_ranges(q))
    _train(back, fp, data, steps=1)


def test_train_mode_does_not_change_what_eval_computes():
    torch.manual_seed(0)
    fp = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                       nn.Flatten(), nn.Dropout(0.3), nn.Linear(8 * 6 * 6, 4)).eval()
    with torch.no_grad():  # BatchNorm statistics that a train-mode forward would move
        for bn in (fp[0], fp[2]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    data = _data(scale=3.0)
    q = torchpqt.quantize(fp, data, {"preset": "mixed"}, progress=False)
    torchpqt.train_ranges(q)
    x = torch.cat(data)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    with torch.no_grad():
        y_eval = q.eval()(x)
        y_train = q.train()(x)
        y_train2 = q(x)
    assert torch.equal(y_train, y_eval) and torch.equal(y_train2, y_eval)
    assert all(torch.equal(v, state[k]) for k, v in q.state_dict().items())  # no statistics updated
    r = torchpqt.load(q.state_dict(), fp, data[0], q.torchpqt_config)  # a rebuilt model switches modes too
    with torch.no_grad():
        assert torch.equal(r.train()(x), y_eval) and torch.equal(r.eval()(x), y_eval)


@pytest.mark.openvino
def test_trained_model_exports_with_the_check_passing_and_its_ranges(tmp_path):
    ov = pytest.importorskip("openvino")
    from torchpqt.exporters import openvino as ov_export

    fp = models.build("tiny_cnn")
    data = models.calibration_data("tiny_cnn", 4)
    q = _train(torchpqt.quantize(fp, data, {"preset": "mixed"}, progress=False), fp, data, lr=3e-2)
    trained = {n: [t.detach().clone() for t in m.ranges()] for n, m in _fqs(q).items()}
    report = ov_export.export(q, data[0], tmp_path / "m.xml")  # check=True: raises when the IR disagrees
    assert report.max_diff_steps is not None and report.max_diff_steps <= 2.0
    assert all(m.ranges_trainable for m in _fqs(q).values()), "export must not freeze the user's model"
    ov_export.export(q, data[0], tmp_path / "f.xml", compress_weights=False, check=False)
    got = []
    for op in ov.Core().read_model(str(tmp_path / "f.xml")).get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            consts = [op.input_value(i).get_node() for i in range(1, 5)]
            got.append(sorted(float(c.get_data().max()) for c in consts))
    want = [sorted(float(t.max()) for t in ranges) for ranges in trained.values()]
    moved = [w for n, w in zip(trained, want) if not torch.equal(trained[n][1], q.get_submodule(n).input_high)]
    assert len(got) == len(want) and moved
    for w in want:  # every trained range is in the IR, as float32
        assert any(g == pytest.approx(w, rel=0, abs=0) for g in got), w


def test_load_finds_tensors_an_algorithm_re_registered():
    # what bias correction / channel alignment do: point a layer at a new bias / weight tensor, under a new name
    from torchpqt.algorithms.layers import layer_of, set_layer_tensor
    from torchpqt.converted import finalize

    fp = _conv_bn_relu_linear()
    data = _data()
    q = torchpqt.quantize(fp, data, {"preset": "mixed"}, progress=False)
    linear = next(n for n in q.graph.nodes if n.op == "call_function" and "linear" in str(n.target))
    layer = layer_of(q, linear)
    set_layer_tensor(q, layer, "bias", torch.full((4,), 0.25))
    set_layer_tensor(q, layer, "weight", torch.randn(4, 288))
    finalize(q)
    names = set(q.state_dict())
    # the names set_layer_tensor chose (fresh ones: bias correction may already have re-registered the bias)
    new_names = {a.target for a in (linear.args[layer.bias_arg],) if isinstance(a, torch.fx.Node)}
    weight_arg = linear.args[layer.weight_arg]
    new_names |= {a.target for a in (weight_arg, *weight_arg.args) if a.op == "get_attr"}
    assert new_names <= names and "4.bias" not in names
    assert {n for n in new_names if n.startswith("linear_")} == new_names and len(new_names) == 2
    x = torch.cat(data)
    r = torchpqt.load(q.state_dict(), fp, data[0], q.torchpqt_config)
    assert set(r.state_dict()) == names
    assert torch.equal(r(x), q(x))
