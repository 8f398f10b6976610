"""Range-estimator tables and the user overlay (spec §5.1, §5.4, §5.5)."""

from __future__ import annotations

import pytest

from torchpqt.errors import ConfigError
from torchpqt.statistics import StatSpec, range_estimator


def _short(spec: StatSpec | None) -> str | None:
    if spec is None:
        return None
    pt = " (pt)" if spec.granularity == "pertensor" else ""
    return f"{spec.type}/{spec.aggregator}{pt}"


# Spec §5.1 tables, transcribed by hand: (preset, granularity, mode) -> (min, max).
ACTIVATION_TABLE = {
    ("default", "pertensor", "symmetric"): ("min/min (pt)", "abs_max/mean (pt)"),
    ("default", "pertensor", "asymmetric"): ("min/mean (pt)", "max/mean (pt)"),
    ("default", "perchannel", "symmetric"): ("min/min (pt)", "abs_max/max"),
    ("default", "perchannel", "asymmetric"): ("min/min", "max/max"),
    ("quantile", "pertensor", "symmetric"): ("min/min (pt)", "abs_quantile/mean (pt)"),
    ("quantile", "pertensor", "asymmetric"): ("quantile/mean (pt)", "quantile/mean (pt)"),
    ("quantile", "perchannel", "symmetric"): ("min/min (pt)", "abs_quantile/max"),
    ("quantile", "perchannel", "asymmetric"): ("quantile/min", "quantile/max"),
}


@pytest.mark.parametrize("group", ["activations", "outputs"])
@pytest.mark.parametrize(("key", "expected"), ACTIVATION_TABLE.items(), ids=lambda v: "/".join(v))
def test_activation_tables(group: str, key: tuple, expected: tuple) -> None:
    preset, granularity, mode = key
    mn, mx = range_estimator(group, mode, granularity, {"preset": preset})
    assert (_short(mn), _short(mx)) == expected
    if preset == "quantile":
        assert mx.outlier_prob == 1e-4


@pytest.mark.parametrize(
    ("preset", "mode", "expected"),
    [
        ("default", "symmetric", (None, "abs_max/None")),
        ("default", "asymmetric", ("min/None", "max/None")),
        ("quantile", "symmetric", (None, "abs_quantile/None")),
        ("quantile", "asymmetric", ("quantile/None", "quantile/None")),
    ],
)
def test_weight_tables(preset: str, mode: str, expected: tuple) -> None:
    mn, mx = range_estimator("weights", mode, "perchannel", {"preset": preset})
    assert (_short(mn), _short(mx)) == expected


def test_no_user_config_is_the_default_preset() -> None:
    assert range_estimator("activations", "symmetric", "pertensor", None) == range_estimator(
        "activations", "symmetric", "pertensor", {"preset": "default"}
    )


def test_user_overlay_is_key_by_key() -> None:
    user = {"max": {"aggregator": "max", "clipping_value": 3.0}}
    mn, mx = range_estimator("activations", "symmetric", "pertensor", user)
    assert (mx.type, mx.aggregator, mx.clipping_value, mx.granularity) == ("abs_max", "max", 3.0, "pertensor")
    assert _short(mn) == "min/min (pt)"


def test_user_max_replaces_symmetric_weight_abs_max() -> None:
    # §5.4 example: a user `max: {type: quantile, ...}` replaces abs_max for symmetric weights.
    mn, mx = range_estimator(
        "weights", "symmetric", "perchannel", {"max": {"type": "quantile", "outlier_prob": 0.01}}
    )
    assert mn is None
    assert (mx.type, mx.q, mx.granularity) == ("quantile", 0.99, "perchannel")


def test_quantile_without_outlier_prob_defaults() -> None:
    _, mx = range_estimator("activations", "asymmetric", "pertensor", {"max": {"type": "quantile"}})
    assert mx.outlier_prob == 1e-4
    assert mx.key == "max_quantile_0.0001"


def test_keys_and_q() -> None:
    mn, mx = range_estimator("activations", "asymmetric", "perchannel", {"preset": "quantile"})
    assert (mn.key, mx.key) == ("min_quantile_0.0001", "max_quantile_0.0001")
    assert (mn.q, mx.q) == (1e-4, 1 - 1e-4)
    assert mn.reducer_key != mx.reducer_key
    mn, mx = range_estimator("activations", "symmetric", "pertensor", None)
    assert (mn.key, mx.key, mn.q) == ("min_min", "max_abs_max", None)


def test_reducer_key_ignores_aggregator_and_clipping() -> None:
    a = StatSpec("max", "abs_max", "mean", "pertensor")
    b = StatSpec("max", "abs_max", "median", "pertensor", clipping_value=2.0)
    assert a.reducer_key == b.reducer_key


def test_weights_ignore_aggregator(caplog: pytest.LogCaptureFixture) -> None:
    _, mx = range_estimator("weights", "symmetric", "perchannel", {"max": {"aggregator": "mean"}})
    assert mx.aggregator is None
    assert "ignored" in caplog.text


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("activations", "symmetric", "pertensor", {"preset": "best"}), "preset = 'best'"),
        (("activations", "symmetric", "pertensor", {"max": {"aggregator": "avg"}}), "max.aggregator = 'avg'"),
        (("activations", "symmetric", "pertensor", {"min": {"type": "median"}}), "min.type = 'median'"),
        (("activations", "symmetric", "pertensor", {"min": {"outlier": 0.1}}), "unknown key"),
        (("activations", "symmetric", "layer", None), "granularity = 'layer'"),
        (("weights", "symmetric", "perchannel", {"min": {"clipping_value": -1.0}}), "min has no 'type'"),
        (
            ("activations", "asymmetric", "pertensor", {"max": {"type": "quantile", "outlier_prob": 2}}),
            "outlier_prob",
        ),
        (("bias", "symmetric", "pertensor", None), "group = 'bias'"),
    ],
)
def test_config_errors(args: tuple, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        range_estimator(*args)
