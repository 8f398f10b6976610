"""Device discipline: calibration keeps every tensor on the model's device with no host read per batch, and
convert() reads the host a number of times that does not grow with the calibration data.

No GPU here: the calibration loop runs on the ``meta`` device (any host read of a meta tensor raises, so a
per-batch ``.item()``/``bool()``/``.cpu()`` fails the test), and convert()'s host reads are counted on CPU
with the accelerator code path selected. The real-CUDA test at the end runs only where CUDA is available."""

from __future__ import annotations

import models
import pytest
import torch

import torchpqt
from torchpqt import calibration
from torchpqt.calibration import CalibrationData, calibrate
from torchpqt.observer import Observer

MEDIAN_HL = {"activations": {"range_estimator": {"min": {"aggregator": "median"},
                                                 "max": {"aggregator": "hl_estimator"}}}}


def _meta(x):
    return tuple(t.to("meta") for t in x) if isinstance(x, tuple) else x.to("meta")


@pytest.mark.parametrize("name,config", [("tiny_cnn", None), ("tiny_bert", MEDIAN_HL),
                                         ("tiny_cnn", {"preset": "mixed", "range_estimator": {"preset": "quantile"}})],
                         ids=["cnn-default", "bert-median-hl", "cnn-quantile"])
def test_calibration_on_meta_reads_nothing_back(name, config):
    data = [_meta(x) for x in models.calibration_data(name, 5)]
    # captured on the device, as quantize() captures a CUDA model (a captured graph may hold its device:
    # HF BERT's mask .to(device))
    prepared = torchpqt.prepare(models.build(name).to("meta"), data[0], config)
    meta = CalibrationData(data, prepared.torchpqt_config)
    assert calibrate(prepared, meta.batches(), progress=False) == 5
    observers = [m for m in prepared.modules() if isinstance(m, Observer)]
    assert observers and all(o.stats.num_batches == 5 for o in observers)
    for o in observers:  # the block fold (NaN/Inf check, aggregation) must not read the host either
        o.stats._fold()
    states = [a._state if hasattr(a, "_state") and a._state is not None else a._parts[0]
              for o in observers for a in o.stats._aggregators.values()]
    assert states and {t.device.type for t in states} == {"meta"}


def test_the_cpu_input_check_would_read_the_host():
    """The meta test can fail: the CPU path's per-batch input check reads the host (and meta refuses)."""
    data = [_meta(x) for x in models.calibration_data("tiny_cnn", 2)]
    prepared = torchpqt.prepare(models.build("tiny_cnn").to("meta"), data[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(calibration, "defer_checks", lambda device: False)
        with pytest.raises(RuntimeError, match="meta"):
            calibrate(prepared, CalibrationData(data, prepared.torchpqt_config).batches(), progress=False)


_HOST = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _host_reads_in_convert(n: int, config) -> int:
    data = models.calibration_data("align_chain", n, seed=2)
    prepared = torchpqt.prepare(models.build("align_chain"), data[0], config)
    with torch.no_grad():
        for x in data:
            prepared(x)
    count = [0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(calibration, "defer_checks", lambda device: True)
        for name in _HOST:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, **kwargs):
                count[0] += 1
                return _original(self, *args, **kwargs)
            mp.setattr(torch.Tensor, name, counted)
        torchpqt.convert(prepared, data, progress=False)
    return count[0]


@pytest.mark.parametrize("config", [{"use_fast_bias": False, "alignment_pass": "separate"}, {}],
                         ids=["two-passes-bias-correction", "one-pass-fast-bias"])
def test_convert_host_reads_do_not_grow_with_the_data(config):
    """align_chain: channel alignment's second pass runs in convert() (separate), or convert() derives the aligned
    tensors' statistics batch by batch (the default); BiasCorrection reads 20 % of the data sample by sample.
    Twice the data, the same host reads: none is per batch or per sample."""
    small, large = _host_reads_in_convert(10, config), _host_reads_in_convert(20, config)
    assert small > 0  # the counter sees convert's per-point reads
    assert large == small


def test_deferred_input_check_names_the_first_bad_batch():
    data = models.calibration_data("tiny_cnn", 4)
    data[2] = data[2].clone()
    data[2][0, 0, 0, 0] = float("nan")
    prepared = torchpqt.prepare(models.build("tiny_cnn"), data[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(calibration, "defer_checks", lambda device: True)
        with pytest.raises(torchpqt.CalibrationError, match=r"sample 2 \(calibration_data\[2\]\).*NaN or Inf"):
            calibrate(prepared, CalibrationData(data, prepared.torchpqt_config).batches(), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (not run where this was written)")
@pytest.mark.parametrize("name,config", [("tiny_cnn", None), ("align_chain", {"use_fast_bias": False}),
                                         ("tiny_bert", MEDIAN_HL)])
def test_quantize_on_cuda_keeps_the_model_on_the_gpu(name, config):
    data = models.calibration_data(name, 6)
    cuda = [tuple(t.cuda() for t in x) if isinstance(x, tuple) else x.cuda() for x in data]
    q = torchpqt.quantize(models.build(name).cuda(), cuda, config, progress=False)
    tensors = [*q.parameters(), *q.buffers()]
    assert tensors and all(t.device.type == "cuda" for t in tensors)
    ref = torchpqt.quantize(models.build(name), data, config, progress=False)
    for (k, a), (_, b) in zip(sorted(q.state_dict().items()), sorted(ref.state_dict().items())):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5, msg=k)
