"""Capture a torch model into an fx graph that looks like what OpenVINO's converter produced.

``torch.export`` (non-strict) is the maintained path; ``torch.export`` strict mode (TorchDynamo) is the
fallback for models the non-strict tracer rejects. Then the graph is rewritten the way the OpenVINO
model converter rewrote it before POT ever saw it (spec §0.1): eval-mode BatchNorm folded into the
preceding convolution / linear, ``scaled_dot_product_attention`` spelled out as
MatMul → Multiply → Add(mask) → SoftMax → MatMul, and the converter's constant fusions
(:mod:`torchpqt.graph.fusions`).
"""

from __future__ import annotations

import copy
import inspect
import itertools
import logging
import traceback
import warnings
from collections.abc import Mapping

import torch
from torch import fx

from torchpqt.errors import CaptureError
from torchpqt.graph.attrs import get_attr_tensor, unique_attr_name
from torchpqt.graph.fusions import fuse_constants
from torchpqt.graph.inputs import InputCheck, captured_inputs
from torchpqt.graph.ops import packet_name
from torchpqt.inputs import split_inputs

logger = logging.getLogger("torchpqt")
aten = torch.ops.aten

__all__ = ["capture"]


def _dynamic_shapes(model: torch.nn.Module, args: tuple, kwargs: dict):
    """Every tensor dimension is left to torch.export to decide (Dim.AUTO): batch and sequence
    lengths stay dynamic where the model allows it. Images and volumes (floating-point, 4-D or more) keep
    their spatial size: only the batch is dynamic (symbolic heights and widths through a Swin window
    partition took torch.export over 10 minutes, and POT's IRs had static spatial shapes too)."""
    def spec(value):
        if isinstance(value, torch.Tensor):
            if value.dtype.is_floating_point and value.dim() >= 4:
                return {0: torch.export.Dim.AUTO}
            return {i: torch.export.Dim.AUTO for i in range(value.dim())}
        if isinstance(value, (tuple, list)):
            return type(value)(spec(v) for v in value)
        if isinstance(value, Mapping):
            return {k: spec(v) for k, v in value.items()}
        return None
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        signature = None
    variadic = signature is not None and any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    if not kwargs and not variadic:
        return spec(args)
    try:  # by parameter name; forward(*args) takes its inputs as one tuple
        bound = signature.bind(*args, **kwargs)
    except (AttributeError, TypeError):
        return None
    return {name: spec(value) for name, value in bound.arguments.items()}


def _widen_batch(value):
    """torch.export specializes dimensions of size 1; widen a batch of one to two for capture."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value, value]) if value.dim() > 0 and value.shape[0] == 1 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_widen_batch(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _widen_batch(v) for k, v in value.items()}
    return value


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch: where in the user's code tracing failed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/torch/" not in f.filename and "/torchpqt/" not in f.filename]
    if not frames:
        return "unknown location"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} ({f.line})"


def _export(model: torch.nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    errors = []
    wide_args, wide_kwargs = _widen_batch(args), _widen_batch(kwargs)
    attempts = [(wide_args, wide_kwargs, False), (args, kwargs, False), (wide_args, wide_kwargs, True)]
    # "0/1 specialized" notes for Dim.AUTO dimensions are expected here; a failed attempt logs its traceback
    # at ERROR level (fake_tensor "failed while attempting to run meta", _trace), and CaptureError reports it
    noisy = {logging.getLogger("torch._export.non_strict_utils"): logging.ERROR,
             logging.getLogger("torch._subclasses.fake_tensor"): logging.CRITICAL,
             logging.getLogger("torch.export._trace"): logging.CRITICAL}
    levels = {lg: lg.level for lg in noisy}
    for lg, level in noisy.items():
        lg.setLevel(level)
    try:
        with warnings.catch_warnings():
            # nn.LSTM/GRU re-assign their own _flat_weights list in forward; torch.export warns the user to
            # register them as buffers, which only torch itself could do
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights", category=UserWarning)
            return _try_exports(model, attempts, errors)
    finally:
        for lg, level in levels.items():
            lg.setLevel(level)


def _try_exports(model, attempts, errors):
    for a, k, strict in attempts:
        try:
            return torch.export.export(model, a, k, dynamic_shapes=_dynamic_shapes(model, a, k), strict=strict)
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            errors.append(exc)
            logger.debug("torch.export (strict=%s) failed: %s", strict, exc)
    try:  # fallback: torch.fx symbolic tracing resolves Python-level structure, export then lowers it
        traced = fx.symbolic_trace(model)
        a, k = attempts[0][:2]
        return torch.export.export(traced, a, k, dynamic_shapes=_dynamic_shapes(traced, a, k), strict=False)
    except Exception as exc:  # noqa: BLE001
        logger.debug("torch.fx symbolic_trace fallback failed: %s", exc)
    first = errors[0]
    text = str(first).strip()
    fix = ("make forward() traceable: no Python control flow on tensor values (use torch.where or torch.cond), "
           "no data-dependent output structure; or quantize the traceable submodule alone")
    if "Cache" in text and "pytree" in text:
        fix = ("the model returns a key/value cache object torch.export cannot flatten; for a HuggingFace model "
               "set model.config.use_cache = False (or pass use_cache=False in the inputs)")
    elif isinstance(first, RuntimeError) and any(w in text for w in ("shape", "size", "dim")):
        fix = ("the example inputs (the first calibration sample when quantize() captures) do not fit the "
               "model: pass inputs of the shapes forward() takes")
    raise CaptureError(
        f"could not capture {type(model).__name__} with torch.export: {type(first).__name__}: "
        f"{text.splitlines()[0] if text else ''}\n"
        f"  failing code: {_user_frame(first)}\n"
        f"  inputs: {_shapes(attempts[1][0], attempts[1][1])}\n"
        f"  fix: {fix}") from first


def _shapes(args: tuple, kwargs: dict) -> str:
    def one(v):
        if isinstance(v, torch.Tensor):
            return f"{list(v.shape)} {str(v.dtype).removeprefix('torch.')}"
        if isinstance(v, (tuple, list)):
            return "(" + ", ".join(one(x) for x in v) + ")"
        return type(v).__name__
    return ", ".join([*(one(a) for a in args), *(f"{k}={one(v)}" for k, v in kwargs.items())]) or "none"


def capture(model: torch.nn.Module, example_inputs, *, share_tensors: bool = False) -> fx.GraphModule:
    """Capture ``model`` into a GraphModule, leaving ``model`` untouched.

    Args:
        model: the user's model. It is deep-copied and put in eval mode; the copy is captured.
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
        share_tensors: the copy keeps ``model``'s own parameter and buffer tensors instead of copies of them
            (its modules are still copies: eval mode and export touch only those). For a caller that only reads
            the captured graph's tensors while ``model`` cannot change, as inside :func:`torchpqt.quantize`
            (whose convert() copies the graph before any step writes): one copy of the weights less. torchpqt
            never writes a captured graph's tensors in place; new values are new tensors.

    Returns:
        A GraphModule taking the same inputs as ``model`` (dynamic batch), with BatchNorm folded and
        attention spelled out. Each call_function node keeps ``meta["nn_module_stack"]``.
    """
    args, kwargs = split_inputs(example_inputs)
    _check_signature(model, args, kwargs)
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())} if share_tensors else {}
    model = copy.deepcopy(model, shared).eval()
    gm = _export(model, args, kwargs).module()
    # torch.export's module-stack tracer class cannot be rebuilt on torch.load(): pickle with fx's default
    gm._tracer_cls, gm._tracer_extras = None, {}
    gm.graph._tracer_cls, gm.graph._tracer_extras = None, {}  # copies of the module take it from here
    _drop_guards(gm)
    fold_batch_norm(gm)
    decompose_attention(gm)
    fuse_constants(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.torchpqt_inputs = captured_inputs(gm, args, kwargs)
    # before torch.export's own check, which raises a bare RuntimeError
    gm.register_forward_pre_hook(InputCheck(gm.torchpqt_inputs), with_kwargs=True, prepend=True)
    return gm


def _check_signature(model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise CaptureError(
            f"the inputs do not fit {type(model).__name__}.forward{signature}: {exc} (got {len(args)} positional "
            f"and {sorted(kwargs)} keyword inputs); fix: if calibration items are (inputs, label) pairs pass "
            "transform_fn=lambda item: item[0], and give example_inputs as a tensor, a tuple of positional inputs "
            "or a dict of keyword inputs") from None


def _drop_guards(gm: fx.GraphModule) -> None:
    """torch.export's input-shape guard module reads the inputs but computes nothing; the converted model
    POT saw had no such node, and placement rules that look for a single consumer must not see it."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
            if hasattr(gm, "_guards_fn"):
                delattr(gm, "_guards_fn")


def _register(gm: fx.GraphModule, hint: str, tensor: torch.Tensor) -> str:
    name = unique_attr_name(gm, hint)
    gm.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))
    return name


def _bn_params(gm, bn: fx.Node):
    name = packet_name(bn)
    if name == "batch_norm":
        _, w, b, mean, var, training, _, eps = bn.args[:8]
        if training:
            return None
    else:  # _native_batch_norm_legit_no_training(input, weight, bias, mean, var, momentum, eps)
        _, w, b, mean, var, _, eps = bn.args[:7]
    get = (lambda n: get_attr_tensor(gm, n) if isinstance(n, fx.Node) and n.op == "get_attr" else None)
    mean_t, var_t = get(mean), get(var)
    if mean_t is None or var_t is None:
        return None
    gamma = get(w) if w is not None else torch.ones_like(mean_t)
    beta = get(b) if b is not None else torch.zeros_like(mean_t)
    if gamma is None or beta is None:
        return None
    return gamma.detach(), beta.detach(), mean_t.detach(), var_t.detach(), float(eps)


def fold_batch_norm(gm: fx.GraphModule) -> int:
    """Fold eval-mode BatchNorm into the preceding conv / linear (what the OpenVINO converter did).

    Returns the number of folded BatchNorms. New weights are new tensors: nothing is changed in place.
    """
    folded = 0
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or packet_name(bn) not in ("batch_norm",
                                                               "_native_batch_norm_legit_no_training"):
            continue
        src = bn.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_function" or len(src.users) != 1:
            continue
        kind = packet_name(src)
        if kind not in ("conv1d", "conv2d", "conv3d", "linear", "convolution"):
            continue
        if kind == "convolution" and src.args[6]:
            continue  # transposed conv: not folded (OpenVINO keeps a separate scale-shift too)
        weight = src.args[1]
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            continue
        params = _bn_params(gm, bn)
        if params is None:
            continue
        gamma, beta, mean, var, eps = params
        w = get_attr_tensor(gm, weight).detach()
        bias_node = src.args[2] if len(src.args) > 2 else None
        b = get_attr_tensor(gm, bias_node).detach() if isinstance(bias_node, fx.Node) else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + eps)
        new_w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
        new_b = (b - mean) * scale + beta
        with gm.graph.inserting_before(src):
            w_node = gm.graph.get_attr(_register(gm, f"{weight.target}_bnfold", new_w))
            b_node = gm.graph.get_attr(_register(gm, f"{weight.target}_bnfold_bias", new_b))
        args = list(src.args)
        while len(args) < 3:
            args.append(None)
        args[1], args[2] = w_node, b_node
        src.args = tuple(args)
        for n in (w_node, b_node):
            n.meta["val"] = get_attr_tensor(gm, n)
        bn.replace_all_uses_with(src)
        gm.graph.erase_node(bn)
        folded += 1
    if folded:
        logger.debug("folded %d BatchNorm layers into convolutions", folded)
    return folded


def decompose_attention(gm: fx.GraphModule) -> int:
    """Spell out ``scaled_dot_product_attention`` as the IR POT saw: MatMul(Q, Kᵀ) → Multiply(scale)
    → Add(mask) → SoftMax → MatMul(·, V)."""
    count = 0
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or packet_name(node) != "scaled_dot_product_attention":
            continue
        q, k, v = node.args[:3]
        opts = dict(zip(("attn_mask", "dropout_p", "is_causal"), node.args[3:6]))
        opts.update(node.kwargs)
        if opts.get("is_causal") or opts.get("enable_gqa"):
            logger.warning("kept %s as one op (is_causal / enable_gqa): its matmuls are not quantized",
                           node.name)
            continue
        q_val = node.meta.get("val")
        head_dim = q.meta["val"].shape[-1] if isinstance(q, fx.Node) and "val" in q.meta else None
        scale = opts.get("scale") or (1.0 / float(head_dim) ** 0.5 if head_dim is not None else None)
        if scale is None:
            continue
        mask = opts.get("attn_mask")
        existing = set(graph.nodes)
        with graph.inserting_before(node):
            kt = graph.call_function(aten.transpose.int, (k, -2, -1))
            scores = graph.call_function(aten.matmul.default, (q, kt))
            scores = graph.call_function(aten.mul.Tensor, (scores, float(scale)))
            if mask is not None:
                mask_val = mask.meta.get("val") if isinstance(mask, fx.Node) else None
                if mask_val is not None and mask_val.dtype == torch.bool:
                    low = torch.finfo(q_val.dtype if q_val is not None else torch.float32).min
                    scores = graph.call_function(aten.masked_fill.Scalar,
                                                 (scores, graph.call_function(aten.logical_not.default,
                                                                              (mask,)), low))
                else:
                    scores = graph.call_function(aten.add.Tensor, (scores, mask))
            probs = graph.call_function(aten.softmax.int, (scores, -1))
            out = graph.call_function(aten.matmul.default, (probs, v))
        for new in (n for n in graph.nodes if n not in existing):
            new.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
        out.meta["val"] = q_val
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        count += 1
    return count

