"""Planning: capture the model, place FakeQuantize (spec §7), choose each one's config and statistics
(§3, §5) and mark the saturation fix (§4.6). The result is an immutable :class:`QuantizationPlan`."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import fx

from torchpqt.algorithms.min_max import rescaled_ops, resolve_points
from torchpqt.config import DefaultQuantizationConfig
from torchpqt.graph.capture import capture
from torchpqt.graph.placement import place
from torchpqt.graph.view import GraphView
from torchpqt.hardware import load_hardware_config
from torchpqt.plan import QuantizationPlan

__all__ = ["make_plan"]


def make_plan(model: torch.nn.Module, example_inputs, cfg: DefaultQuantizationConfig, *, share_tensors: bool = False
              ) -> tuple[fx.GraphModule, QuantizationPlan]:
    """The captured graph and its plan; the plan's points refer to that graph's nodes (``share_tensors``: see
    :func:`~torchpqt.graph.capture.capture`)."""
    gm = capture(model, example_inputs, share_tensors=share_tensors)
    hw = load_hardware_config(cfg.target_device)
    view = GraphView(gm, frozenset(hw.ops))
    placement = place(view, hw, cfg)
    points = resolve_points(placement, hw, cfg)
    rescale = rescaled_ops(view, cfg)
    taken = set(dict(gm.named_modules())) | set(dict(gm.named_parameters())) | set(dict(gm.named_buffers()))
    planned = []
    for p in points:
        base, i, name = p.module_name, 1, p.module_name
        while name in taken:  # sanitized names can collide (`a.b/x` vs `a_b/x`)
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        scale = 2.0 if p.group == "weights" and p.site.edges[0].consumer in rescale else p.output_scale
        consumers = tuple(dict.fromkeys(view.scope_of(e.consumer) for e in p.site.edges))
        planned.append(replace(p, module_name=name, output_scale=scale, consumer_scopes=consumers))
    scopes = tuple(sorted({view.scope_of(n) for n in view.ops if not view.is_const(n)}))
    qplan = QuantizationPlan(tuple(planned), {view.scope_of(n): r for n, r in placement.skipped.items()},
                             {view.scope_of(n): r for n, r in placement.ignored.items()}, scopes)
    return gm, qplan
