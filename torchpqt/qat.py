"""Quantization-aware training of a converted model, and saving / rebuilding it.

The model :func:`torchpqt.convert` returns is an ordinary ``torch.nn.Module``: its weights and biases are
trainable parameters quantized on the fly by their FakeQuantize (see :mod:`torchpqt.converted`).
:func:`train_ranges` makes the FakeQuantize ranges trainable too (POT's layerwise-tuning parameterization,
:mod:`torchpqt.quant.trainable`, the one layerwise tuning uses), so one optimizer trains both::

    qmodel = torchpqt.quantize(model, calibration_data, config)
    torchpqt.train_ranges(qmodel)
    opt = torch.optim.Adam(qmodel.parameters(), lr=1e-4)
    ...                                          # the training loop; gradients pass rounding by the STE
    torch.save(qmodel.state_dict(), "qmodel.pt")
    # in another process:
    qmodel = torchpqt.load("qmodel.pt", model, example_inputs, config)
    torchpqt.exporters.openvino.export(qmodel, example_inputs, "model.xml")   # trained ranges, frozen copy

BatchNorm is folded into the preceding convolution / linear layer before quantizing (as POT's converter
did): fine-tuning trains the folded weight and bias, and there are no BatchNorm statistics left to update.
The captured graph is the model's eval-mode computation (dropout removed, any unfolded BatchNorm in its
inference form), so ``qmodel.train()`` changes nothing the forward computes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn

from torchpqt._once import call_scope
from torchpqt.algorithms import min_max
from torchpqt.config import load_config
from torchpqt.converted import finalize, weight_and_bias_nodes
from torchpqt.errors import TorchPQTError
from torchpqt.graph.view import const_value
from torchpqt.observer import instrument
from torchpqt.planning import make_plan
from torchpqt.quant import trainable
from torchpqt.quant.fake_quantize import FakeQuantize

__all__ = ["freeze_ranges", "load", "train_ranges"]

logger = logging.getLogger("torchpqt")
_RANGES = ("input_low", "input_high", "output_low", "output_high")


def train_ranges(qmodel: nn.Module, enabled: bool = True) -> list[nn.Parameter]:
    """Makes every FakeQuantize range of a converted model trainable (in place), for QAT.

    Each range gets ``log_scale`` (the log of its width relative to the calibrated one); an *asymmetric*
    FakeQuantize of the model's plan also gets ``min_shift`` (a shift of the range, zero point kept on an
    integer level) unless every channel of its range has an edge at zero; symmetric ones only scale about zero, so they stay symmetric exactly. Ranges with an
    edge at zero (ReLU outputs) keep it. ``qmodel.parameters()`` then holds the weights, biases and ranges.

    Args:
        qmodel: the model :func:`torchpqt.convert` / :func:`torchpqt.quantize` / :func:`load` returned.
        enabled: False freezes the ranges again (see :func:`freeze_ranges`).

    Returns:
        The range parameters (e.g. for an optimizer group with its own learning rate).
    """
    plan = getattr(qmodel, "torchpqt_plan", None)
    asymmetric = {p.module_name for p in plan.points if p.spec.mode == "asymmetric"} if plan is not None else set()

    def shifts(name: str, fq: FakeQuantize) -> bool:
        # a range with an edge at zero on every channel (a ReLU output) is never shifted: no dead parameter
        return name in asymmetric and not bool(((fq.input_low == 0) | (fq.input_high == 0)).all())
    return trainable.train_ranges(qmodel, enabled, train_min=shifts)


def freeze_ranges(qmodel: nn.Module) -> nn.Module:
    """Writes the trained ranges into the FakeQuantize buffers and drops the range parameters (in place).
    The exporters freeze a copy themselves; this is for a model that is done training."""
    return trainable.freeze_ranges(qmodel)


def _state(state: Mapping[str, torch.Tensor] | str | os.PathLike) -> dict[str, torch.Tensor]:
    if isinstance(state, (str, os.PathLike)):
        state = torch.load(state, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise TorchPQTError(f"torchpqt.load: expected a state_dict or the path of one saved with "
                            f"torch.save(qmodel.state_dict(), path), got {type(state).__name__}")
    return dict(state)


def _fake_quantize(p, state: dict[str, torch.Tensor]) -> FakeQuantize:
    keys = [f"{p.module_name}.{r}" for r in _RANGES]
    missing = [k for k in keys if k not in state]
    if missing:
        raise TorchPQTError(f"torchpqt.load: the state_dict has no {', '.join(missing)}: it was not saved from a "
                            "model converted with this model, example input shapes and config; pass the same "
                            "config (e.g. qmodel.torchpqt_config) and inputs of the same shapes")
    return FakeQuantize(p.spec.levels, *(state[k] for k in keys))


def _install(gm: fx.GraphModule, plan, config, state: dict[str, torch.Tensor]) -> None:
    """The FakeQuantize modules of ``plan`` with the ranges ``state`` holds, where convert() puts them."""
    instrument(gm, min_max.statistic_points(plan, config))  # inline nodes at the activation sites
    nodes = {n.name: n for n in gm.graph.nodes}
    for p in plan.points:
        fq = _fake_quantize(p, state)
        if p.group != "weights":
            gm.add_submodule(p.module_name, fq)
            continue
        weight = const_value(gm, nodes[p.site.tensor.name])
        # OverflowCorrection stored W / r (any r != 1 makes the same structure; the saved values replace it);
        # the saturation fix's W / 2 follows from the plan's output_scale
        overflow = f"{p.module_name}_scaled_weight" in state and p.output_scale == 1.0
        min_max._install_weight_fq(gm, nodes, p, weight, fq, 2.0 if overflow else 1.0)


def _rename_to_saved(gm: fx.GraphModule, state: dict[str, torch.Tensor]) -> None:
    """Point weight / bias nodes whose name the state_dict lacks at the saved tensor an algorithm registered
    for the same layer (bias correction's ``<layer>_bias_<i>``, channel alignment's ``<layer>_weight_<i>``)."""
    own = set(gm.state_dict())
    spare = set(state) - own
    for node in weight_and_bias_nodes(gm):
        if node.target in state:
            continue
        layer = next(iter(node.users))
        role = "weight" if layer.op == "call_module" or node in layer.args[:2] else "bias"
        if layer.op == "call_module":  # the weight's FakeQuantize: the layer is its consumer
            layer = next(iter(layer.users))
        candidates = sorted(k for k in spare if k.startswith(f"{layer.name}_{role}_"))
        if candidates:
            name = candidates[-1]
            gm.register_parameter(name, nn.Parameter(state[name].clone()))
            node.target = name
            spare.discard(name)


def load(state: Mapping[str, torch.Tensor] | str | os.PathLike, model: nn.Module, example_inputs: Any,
         config=None, target_device: str | None = None) -> fx.GraphModule:
    """Rebuilds a converted model from its ``state_dict`` (e.g. in a fresh process), without calibrating.

    Captures ``model`` and plans FakeQuantize as :func:`torchpqt.prepare` does, installs FakeQuantize modules
    of the saved ranges' shapes where :func:`torchpqt.convert` put them, then loads ``state`` strictly. The
    outputs equal the saved model's bit for bit.

    Args:
        state: ``qmodel.state_dict()`` or the path ``torch.save(qmodel.state_dict(), path)`` wrote (read
            with ``weights_only=True``). Saved with trainable ranges, it holds the effective ranges: the
            rebuilt model has frozen ranges (call :func:`train_ranges` to continue training).
        model: the FP32 model it was converted from (its architecture; its weights are replaced).
        example_inputs: inputs of the shapes used to quantize it.
        config: the config used to quantize it (``qmodel.torchpqt_config`` works).
        target_device: as in :func:`torchpqt.prepare`.

    Raises:
        TorchPQTError: ``state`` does not fit the rebuilt structure (another model, config or input shape).
    """
    with call_scope():
        state = _state(state)
        cfg = load_config(config)
        if target_device is not None and target_device != cfg.target_device:
            cfg = cfg.replace(target_device=target_device)
        gm, plan = make_plan(model, example_inputs, cfg)
        _install(gm, plan, cfg, state)
        finalize(gm)
        _rename_to_saved(gm, state)
        finalize(gm)
        result = gm.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise TorchPQTError(
                "torchpqt.load: the state_dict does not fit the rebuilt model (missing "
                f"{sorted(result.missing_keys)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}); pass the "
                "model, config (qmodel.torchpqt_config) and example input shapes it was quantized with, or save "
                "the whole module with torch.save(qmodel) and torch.load(path, weights_only=False)")
        gm.torchpqt_plan = plan
        gm.torchpqt_config = {"name": "DefaultQuantization", "params": cfg.to_dict(full=True)}
        return gm
