"""Calibration data that cannot give a range: NaN/Inf samples, a NaN/Inf the model makes from finite inputs,
and samples of a shape the captured model cannot take. Each is a CalibrationError naming the sample (or the
FakeQuantize point) and the tensor, raised before any range is computed."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import torchpqt
from torchpqt.errors import CalibrationError, CaptureError, TorchPQTError
from torchpqt.statistics.collector import TensorStatistics
from torchpqt.statistics.estimators import StatSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.out = nn.Linear(16, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


class ConvHead(nn.Module):
    """uint8 image -> float -> conv -> flatten -> linear: H and W stay dynamic in the capture (an integer input
    keeps every dimension dynamic; float images only their batch), yet only 8x8 fits the linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(self.conv(x.float()).flatten(1))


class Overflow(nn.Module):
    """Finite inputs, infinite activations: exp of a large pre-activation."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.exp(self.a(x) * 100.0))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 3)

    def forward(self, x, bias):
        return self.fc(x) + bias


def _samples(n, shape=(1, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def _message(excinfo) -> str:
    return str(excinfo.value)


# --- NaN / Inf in the data ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, kind", [(float("nan"), "NaN"), (float("inf"), "Inf"), (-float("inf"), "Inf")])
def test_nonfinite_sample_names_the_sample_and_the_input(bad, kind):
    data = _samples(6)
    data[3] = data[3].clone()
    data[3][0, 5] = bad
    with pytest.raises(CalibrationError) as excinfo:
        torchpqt.quantize(MLP(), data, progress=False)
    msg = _message(excinfo)
    assert "sample 3 (calibration_data[3])" in msg and "input x" in msg and kind in msg
    assert "1 of 16 values" in msg


def test_nonfinite_row_inside_a_multi_sample_item():
    """Items holding several samples: the message gives the item and the row; stat_batch_size regroups."""
    data = [torch.randn(4, 16), torch.randn(4, 16)]
    data[1][2, 0] = float("nan")
    with pytest.raises(CalibrationError) as excinfo:
        torchpqt.quantize(MLP(), data, {"stat_batch_size": 3}, progress=False)
    # samples 0-2 | 3-5 | 6-7: calibration_data[1] row 2 is sample 6
    assert "sample 6 (calibration_data[1], row 2)" in _message(excinfo)


def test_nonfinite_sample_beyond_stat_subset_size_is_never_read():
    data = _samples(6)
    data[5] = torch.full((1, 16), float("nan"))
    q = torchpqt.quantize(MLP(), data, {"stat_subset_size": 5}, progress=False)
    for m in q.modules():
        if isinstance(m, torchpqt.FakeQuantize):
            assert torch.isfinite(m.input_low).all() and torch.isfinite(m.input_high).all()


def test_nonfinite_keyword_input_is_named():
    g = torch.Generator().manual_seed(1)
    data = [{"x": torch.randn(1, 6, generator=g), "bias": torch.randn(1, 3, generator=g)} for _ in range(4)]
    data[2]["bias"] = torch.tensor([[0.0, float("inf"), 1.0]])
    with pytest.raises(CalibrationError) as excinfo:
        torchpqt.quantize(TwoInputs(), data, progress=False)
    assert "sample 2 (calibration_data[2]): input bias holds Inf" in _message(excinfo)


def test_integer_inputs_are_not_checked_for_nan():
    """Token ids cannot be NaN: only float inputs are checked, and an int64 model quantizes as usual."""
    q = torchpqt.quantize(models.build("bow_mean"), models.calibration_data("bow_mean", 4), progress=False)
    assert any(isinstance(m, torchpqt.FakeQuantize) for m in q.modules())


# --- NaN / Inf made by the model ---------------------------------------------------------------------------


def test_activation_overflow_on_finite_inputs_names_the_fakequantize_point():
    data = [torch.randn(1, 4) * 0.01 for _ in range(3)] + [torch.full((1, 4), 10.0)]
    with pytest.raises(CalibrationError) as excinfo:
        torchpqt.quantize(Overflow(), data, progress=False)
    msg = _message(excinfo)
    assert "'b/fq_input_0' (the output of 'exp')" in msg and "batch 3" in msg
    assert "ignored.scope: ['b']" in msg


def test_user_loop_nonfinite_is_reported_at_convert_with_the_earliest_point():
    """prepare() + the user's own loop: observers note the first bad batch without a device sync; convert()
    refuses before computing a range, naming the point that went bad first."""
    prepared = torchpqt.prepare(Overflow(), torch.randn(1, 4))
    with torch.no_grad():
        for x in [torch.randn(1, 4) * 0.01, torch.full((1, 4), 10.0), torch.full((1, 4), float("nan"))]:
            prepared(x)
    with pytest.raises(CalibrationError) as excinfo:
        torchpqt.convert(prepared)
    msg = _message(excinfo)
    assert "'b/fq_input_0'" in msg and "batch 1" in msg and "1 other point(s)" in msg


def test_collector_keeps_the_first_nonfinite_batch():
    stats = TensorStatistics([StatSpec("min", "min", "mean", "pertensor"),
                              StatSpec("max", "max", "mean", "pertensor")])
    batches = [torch.randn(2, 3), torch.randn(2, 3), torch.tensor([[1.0, float("inf"), 0.0]] * 2),
               torch.randn(2, 3), torch.full((2, 3), float("nan"))]
    seen = []
    for x in batches:
        stats.update(x)
        seen.append(stats.first_nonfinite_batch())
    assert seen == [None, None, 2, 2, 2]


def test_per_channel_nan_in_one_channel_is_caught():
    stats = TensorStatistics([StatSpec("max", "max", "max", "perchannel")])
    x = torch.randn(2, 4, 3)
    x[1, 2, 0] = float("nan")
    stats.update(torch.randn(2, 4, 3))
    stats.update(x)
    assert stats.first_nonfinite_batch() == 1


# --- shapes the model cannot take -----------------------------------------------------------------------


def test_sample_with_a_fixed_dimension_wrong_names_sample_and_both_shapes():
    data = _samples(3) + [torch.randn(1, 8)]
    with pytest.raises(CalibrationError) as excinfo:
        torchpqt.quantize(MLP(), data, progress=False)
    msg = _message(excinfo)
    assert "sample 3 (calibration_data[3])" in msg
    assert "input x has shape [1, 8], the captured model takes [*, 16]" in msg
    assert "captured with x: [1, 16] float32" in msg


def test_sample_that_fails_inside_the_model_is_wrapped_with_the_torch_error():
    """A dimension torch.export left dynamic but the model cannot take: the forward fails deep inside; the
    error names the sample, the shapes, and keeps torch's message and exception as the cause."""
    data = [torch.randint(0, 255, shape, dtype=torch.uint8) for shape in ((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 10, 10))]
    with pytest.raises(CalibrationError) as excinfo:
        torchpqt.quantize(ConvHead(), data, progress=False)
    msg = _message(excinfo)
    assert "sample 2 (calibration_data[2])" in msg and "mat1 and mat2 shapes cannot be multiplied" in msg
    assert "received x: [1, 3, 10, 10] uint8" in msg and "captured with x: [1, 3, 8, 8] uint8" in msg
    assert isinstance(excinfo.value.__cause__, RuntimeError)


def test_out_of_range_token_id_is_wrapped():
    data = models.calibration_data("bow_mean", 3)
    data[1] = data[1].clone()
    data[1][0, 0] = 1000  # vocabulary of 40
    with pytest.raises(CalibrationError) as excinfo:
        torchpqt.quantize(models.build("bow_mean"), data, progress=False)
    assert "sample 1 (calibration_data[1])" in _message(excinfo)
    assert "int64" in _message(excinfo)


def test_prepared_model_in_the_users_loop_checks_the_shape():
    prepared = torchpqt.prepare(MLP(), torch.randn(1, 16))
    with torch.no_grad():
        prepared(torch.randn(5, 16))  # the batch dimension is free
        for bad in (torch.randn(2, 8), torch.randn(16)):
            with pytest.raises(CalibrationError, match=r"input x has shape .* takes \[\*, 16\]"):
                prepared(bad)


def test_samples_of_different_shapes_in_one_inference_batch():
    data = _samples(4)
    data[3] = torch.randn(1, 12)
    with pytest.raises(CalibrationError) as excinfo:
        torchpqt.quantize(MLP(), data, {"stat_batch_size": 2}, progress=False)
    msg = _message(excinfo)
    assert "calibration_data[2]: [1, 16], calibration_data[3]: [1, 12]" in msg and "stat_batch_size=1" in msg


def test_first_sample_of_the_wrong_shape_is_a_capture_error_with_its_shape():
    with pytest.raises(CaptureError) as excinfo:
        torchpqt.quantize(MLP(), [torch.randn(1, 8)] + _samples(2), progress=False)
    msg = _message(excinfo)
    assert "inputs: [1, 8] float32" in msg and "do not fit the model" in msg


def test_calibration_error_is_a_torchpqt_error():
    assert issubclass(CalibrationError, TorchPQTError)


@pytest.mark.parametrize("values, finite", [
    ([1.0, 2.0], True), ([3e38, 3e38], True),  # a sum that overflows: checked value by value
    ([float("nan"), 1.0], False), ([float("inf"), 1.0], False), ([float("inf"), -float("inf")], False),
    ([-float("inf"), 0.0], False)])
def test_the_finite_input_check_is_exact(values, finite):
    """The calibration's input check (a finite sum proves every value finite; otherwise look at the values) says
    exactly whether an input holds NaN or Inf, also where finite values overflow the sum."""
    from torchpqt.calibration import _all_finite

    x = torch.tensor(values * 1000, dtype=torch.float32)
    assert _all_finite(x) is finite
    assert _all_finite(x.to(torch.float16)) is bool(torch.isfinite(x.to(torch.float16)).all())
