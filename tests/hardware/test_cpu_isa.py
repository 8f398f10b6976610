"""The int8-saturation advice: which CPUs saturate, and when the advice is logged (flags injected)."""

import logging

import models
import pytest

import torchpqt
from torchpqt.hardware.cpu_isa import advise_saturation, cpu_flags, int8_saturates, saturation_advice

AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma"}
VNNI = AVX2 | {"avx512f", "avx512_vnni"}


@pytest.mark.parametrize("flags, want", [
    (AVX2, True), (VNNI, False), (AVX2 | {"avx_vnni"}, False), (AVX2 | {"amx_int8"}, False),
    (None, None), ({"fp", "asimd"}, None),  # unknown; an Arm CPU
])
def test_which_cpus_saturate(flags, want):
    assert int8_saturates(flags) is want


def test_cpuinfo_flags_are_read(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 avx512_vnni\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(f)) == {"fpu", "sse4_2", "avx2", "avx512_vnni"}
    assert cpu_flags(str(tmp_path / "missing")) is None


def _plan(config):
    return torchpqt.plan(models.build("tiny_cnn"), models.example_input("tiny_cnn"), config)


@pytest.mark.parametrize("config, flags, advised", [
    ({}, AVX2, True),                                   # default first_layer on an AVX2-only CPU
    ({}, VNNI, False),                                  # VNNI: no saturation
    ({}, None, False),                                  # unknown CPU: say nothing
    ({"saturation_fix": "all"}, AVX2, False),           # already covered
    ({"saturation_fix": "no"}, AVX2, False),            # the user's explicit choice
    ({"target_device": "GPU"}, AVX2, False),            # not a CPU target
    ({"target_device": "ANY"}, AVX2, True),
])
def test_when_the_advice_is_given(config, flags, advised):
    cfg = torchpqt.load_config(config)
    message = saturation_advice(_plan(cfg), cfg, flags)
    assert (message is not None) is advised
    if advised:
        assert 'saturation_fix: "all"' in message and "covers 1 of 8" in message


def test_nothing_to_advise_without_a_convolution():
    cfg = torchpqt.load_config({})
    plan = torchpqt.plan(models.build("matmul_const"), models.example_input("matmul_const"), cfg)
    assert saturation_advice(plan, cfg, AVX2) is None  # POT's fix, "all" included, needs a convolution


def test_the_advice_is_one_log_line(caplog):
    cfg = torchpqt.load_config({})
    with caplog.at_level(logging.WARNING, logger="torchpqt"):
        advise_saturation(_plan(cfg), cfg, AVX2)
        advise_saturation(_plan(cfg), cfg, AVX2)
    assert sum("VNNI" in r.getMessage() for r in caplog.records) == 1
