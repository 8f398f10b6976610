"""A sweep over model architectures: plan -> quantize -> OpenVINO export (check on) -> int8 IR run.

Every family is built from a small config with random weights (seeded): the transformers ones from
their ``*Config`` (2 layers, hidden 64 or the like), the torch ones here. Each goes through
``torchpqt.plan``, ``torchpqt.quantize`` (default config; ``model_type: transformer`` for the
transformer families) on random calibration inputs, ``torchpqt.exporters.openvino.export`` with the
check on, and an OpenVINO int8 run (``INFERENCE_PRECISION_HINT=f32``) on held-out random inputs.

Columns: quantize ok, FakeQuantize count (torch modules), SQNR of the torch fake-quant model vs FP32,
SQNR of the int8 IR vs FP32 (same inputs), share of Convolution/MatMul ops that run int8 on CPU, or
the failure (stage, error class and its first line).

    python benchmarks/architectures.py                   # all families, plain text
    python benchmarks/architectures.py --families bert,vit --markdown

``transformers`` is needed here only (a test/benchmark dependency, never imported by torchpqt).
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import torchpqt
from torchpqt.quant.fake_quantize import FakeQuantize

CALIBRATION = 16
EVALUATION = 4
SEQ = 16
VOCAB = 100


# ---------------------------------------------------------------------------------------------------------
# model builders: each returns (model, make_inputs(generator) -> tuple of batch-1 tensors, transformer?)


class _Main(nn.Module):
    """A transformers model returning its main tensor (``last_hidden_state`` / ``logits``)."""

    def __init__(self, model: nn.Module, key: str, names: tuple[str, ...] | None = None):
        super().__init__()
        self.model, self.key, self.names = model, key, names

    def forward(self, *args):
        if self.names:  # text models: input_ids, attention_mask by keyword (GPT-2's 2nd positional is the cache)
            return getattr(self.model(**dict(zip(self.names, args))), self.key)
        return getattr(self.model(*args), self.key)


def _tokens(g: torch.Generator, mask: bool = True):
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=g)
    if not mask:
        return (ids,)
    length = int(torch.randint(SEQ // 2, SEQ + 1, (1,), generator=g))
    attention = torch.zeros(1, SEQ, dtype=torch.long)
    attention[:, :length] = 1
    return ids, attention


def _image(size: int = 32, channels: int = 3):
    return lambda g: (torch.randn(1, channels, size, size, generator=g),)


def _hf(name: str):
    import transformers
    return getattr(transformers, name)


def _text(model_cls: str, config_cls: str, mask: bool = True, **kw):
    def build():
        config = _hf(config_cls)(**kw)
        config._attn_implementation = "eager"
        model = _hf(model_cls)(config)
        names = ("input_ids", "attention_mask") if mask else ("input_ids",)
        return _Main(model, "last_hidden_state", names), lambda g: _tokens(g, mask), True
    return build


def _trained_like(model: nn.Module) -> nn.Module:
    """LeCun-initialized convolutions and BatchNorm with spread statistics: at transformers' default init
    (std 0.02) MobileNetV2's and MobileViT's activations vanish to 1e-25 and 0 by the last layer."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _vision(model_cls: str, config_cls: str, key: str = "last_hidden_state", size: int = 32,
            transformer: bool = True, reinit: bool = False, **kw):
    def build():
        config = _hf(config_cls)(**kw)
        config._attn_implementation = "eager"
        model = _hf(model_cls)(config)
        return _Main(_trained_like(model) if reinit else model, key), _image(size), transformer
    return build


def _wav2vec2():
    config = _hf("Wav2Vec2Config")(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                   conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                                   num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                                   do_stable_layer_norm=False, feat_extract_norm="group")
    config._attn_implementation = "eager"
    return _Main(_hf("Wav2Vec2Model")(config), "last_hidden_state"), lambda g: (torch.randn(1, 1600, generator=g),), True


def _whisper():
    config = _hf("WhisperConfig")(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128,
                                  decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=128,
                                  num_mel_bins=16, max_source_positions=32, vocab_size=VOCAB,
                                  pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)
    config._attn_implementation = "eager"
    encoder = _hf("WhisperModel")(config).get_encoder()
    return _Main(encoder, "last_hidden_state"), lambda g: (torch.randn(1, 16, 64, generator=g),), True


def _conv_bn_act(cin, cout, k=3, s=1, act=nn.ReLU, dims=2):
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    return nn.Sequential(conv(cin, cout, k, s, k // 2, bias=False), bn(cout), act())


class UNet(nn.Module):
    """Two-level U-Net: conv blocks, max-pool down, ConvTranspose up, skip Concat."""

    def __init__(self, dims: int = 2, cin: int = 3, width: int = 16, classes: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.pool = nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d(2)
        self.enc1 = nn.Sequential(_conv_bn_act(cin, width, dims=dims), _conv_bn_act(width, width, dims=dims))
        self.enc2 = nn.Sequential(_conv_bn_act(width, 2 * width, dims=dims),
                                  _conv_bn_act(2 * width, 2 * width, dims=dims))
        self.mid = _conv_bn_act(2 * width, 4 * width, dims=dims)
        self.up2 = up(4 * width, 2 * width, 2, 2)
        self.dec2 = _conv_bn_act(4 * width, 2 * width, dims=dims)
        self.up1 = up(2 * width, width, 2, 2)
        self.dec1 = _conv_bn_act(2 * width, width, dims=dims)
        self.head = conv(width, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


class Recurrent(nn.Module):
    """Embedding-free sequence classifier: LSTM or GRU over (batch, time, features), Linear on the last step."""

    def __init__(self, kind: str = "LSTM"):
        super().__init__()
        self.rnn = getattr(nn, kind)(16, 32, num_layers=1, batch_first=True)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class Encoder(nn.Module):
    """Linear in, ``nn.TransformerEncoder`` (2 layers, d_model 64), Linear out."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(64, 8)

    def forward(self, x):
        return self.out(self.encoder(self.inp(x)))


class Attention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention`` between two Linear layers, residual and LayerNorm."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 64)
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.norm = nn.LayerNorm(64)
        self.out = nn.Linear(64, 8)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(self.norm(h + a))


class NormCNN(nn.Module):
    """Convs with GroupNorm and InstanceNorm instead of BatchNorm, pooled classifier."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c2, self.n2 = nn.Conv2d(16, 32, 3, 2, 1), nn.InstanceNorm2d(32, affine=True)
        self.c3, self.n3 = nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(8, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.n1(self.c1(x)))
        x = F.relu(self.n2(self.c2(x)))
        x = F.relu(self.n3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


class YoloHead(nn.Module):
    """A YOLO-style neck and head: Conv-BN-SiLU backbone, nearest upsample, Concat, two detection convs."""

    def __init__(self, anchors: int = 3, classes: int = 4):
        super().__init__()
        self.b1 = nn.Sequential(_conv_bn_act(3, 16, s=2, act=nn.SiLU), _conv_bn_act(16, 32, s=2, act=nn.SiLU))
        self.b2 = _conv_bn_act(32, 64, s=2, act=nn.SiLU)
        self.lat = _conv_bn_act(64, 32, k=1, act=nn.SiLU)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = _conv_bn_act(64, 32, act=nn.SiLU)
        self.det_small = nn.Conv2d(32, anchors * (5 + classes), 1)
        self.det_large = nn.Conv2d(64, anchors * (5 + classes), 1)

    def forward(self, x):
        p3 = self.b1(x)
        p4 = self.b2(p3)
        f = self.fuse(torch.cat([self.up(self.lat(p4)), p3], 1))
        small = self.det_small(f).flatten(2)
        large = self.det_large(p4).flatten(2)
        return torch.cat([small, large], 2).sigmoid()


class PReLUNet(nn.Module):
    """Convs with per-tensor and per-channel PReLU, and a PReLU between Linear layers."""

    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 16, 3, padding=1), nn.PReLU()
        self.c2, self.a2 = nn.Conv2d(16, 32, 3, 2, 1), nn.PReLU(32)
        self.fc1, self.a3 = nn.Linear(32, 32), nn.PReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.a2(self.c2(self.a1(self.c1(x))))
        return self.fc2(self.a3(self.fc1(x.mean((2, 3)))))


class SqueezeExcitation(nn.Module):
    """Conv blocks with a squeeze-excitation gate (pool, 1x1 conv, ReLU, 1x1 conv, Hardsigmoid, Mul)."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn_act(3, 32, s=2)
        self.dw = _conv_bn_act(32, 32)
        self.se1, self.se2 = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
        self.proj = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.dw(self.stem(x))
        s = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        x = self.proj(x * s)
        return self.fc(x.mean((2, 3)))


def _torch(module_fn: Callable[[], nn.Module], inputs: Callable) -> Callable:
    return lambda: (module_fn(), inputs, False)


def _seq(g):
    return (torch.randn(1, SEQ, 16, generator=g),)


FAMILIES: dict[str, Callable] = {
    "bert": _text("BertModel", "BertConfig", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=128, max_position_embeddings=64),
    "bert_no_model_type": lambda: (*FAMILIES["bert"]()[:2], False),  # model_type unset: the mask gets no FQ
    "t5_encoder_no_model_type": lambda: (*FAMILIES["t5_encoder"]()[:2], False),
    "distilbert": _text("DistilBertModel", "DistilBertConfig", vocab_size=VOCAB, dim=64, n_layers=2, n_heads=2,
                        hidden_dim=128, max_position_embeddings=64),
    "roberta": _text("RobertaModel", "RobertaConfig", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=128, max_position_embeddings=64),
    "gpt2": _text("GPT2Model", "GPT2Config", vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=2, n_positions=64,
                  use_cache=False, bos_token_id=0, eos_token_id=0),
    "llama": _text("LlamaModel", "LlamaConfig", vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                   use_cache=False),
    "t5_encoder": _text("T5EncoderModel", "T5Config", vocab_size=VOCAB, d_model=64, d_kv=32, d_ff=128,
                        num_layers=2, num_heads=2, use_cache=False),
    "vit": _vision("ViTModel", "ViTConfig", image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=128),
    "deit": _vision("DeiTModel", "DeiTConfig", image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=128),
    "swin": _vision("SwinModel", "SwinConfig", image_size=32, patch_size=4, embed_dim=32, depths=[2, 2],
                    num_heads=[2, 4], window_size=4),
    "convnext": _vision("ConvNextModel", "ConvNextConfig", key="pooler_output", transformer=False,
                        num_stages=2, hidden_sizes=[16, 32], depths=[1, 1]),
    "resnet": _vision("ResNetModel", "ResNetConfig", key="pooler_output", transformer=False, embedding_size=16,
                      hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
    "mobilenet_v2": _vision("MobileNetV2Model", "MobileNetV2Config", key="pooler_output", transformer=False, reinit=True,
                            image_size=32, depth_multiplier=0.35),
    "mobilenet_v2_dw_ignored": _vision("MobileNetV2Model", "MobileNetV2Config", key="pooler_output",
                                       transformer=False, reinit=True, image_size=32, depth_multiplier=0.35),
    "mobilevit": _vision("MobileViTModel", "MobileViTConfig", key="pooler_output", size=64, image_size=64, reinit=True,
                         hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                         num_attention_heads=2),
    "segformer": _vision("SegformerForSemanticSegmentation", "SegformerConfig", key="logits", num_encoder_blocks=2,
                         depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                         patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=32, num_labels=3),
    "wav2vec2": _wav2vec2,
    "wav2vec2_pos_conv_ignored": _wav2vec2,
    "whisper_encoder": _whisper,
    "unet2d": _torch(lambda: UNet(2), _image(32)),
    "unet3d": _torch(lambda: UNet(3, cin=1, width=8), lambda g: (torch.randn(1, 1, 16, 16, 16, generator=g),)),
    "lstm": _torch(lambda: Recurrent("LSTM"), _seq),
    "gru": _torch(lambda: Recurrent("GRU"), _seq),
    "transformer_encoder": _torch(Encoder, _seq),
    "multihead_attention": _torch(Attention, _seq),
    "norm_cnn": _torch(NormCNN, _image(32)),
    "yolo_head": _torch(YoloHead, _image(64)),
    "prelu": _torch(PReLUNet, _image(32)),
    "squeeze_excitation": _torch(SqueezeExcitation, _image(32)),
}


# extra DefaultQuantization params of a row (a workaround the README documents)
EXTRA_PARAMS: dict[str, dict] = {
    # OpenVINO's int8 grouped Convolution (kernel 16, groups 4: wav2vec2's positional conv) is off on CPU
    # (simulated IR 136 dB, int8 run 10 dB against torch); leaving that conv float avoids it
    "wav2vec2_pos_conv_ignored": {"ignored": {"scope": ["model.encoder.pos_conv_embed.conv"]}},
    # the CPU plugin's int8 run of Convolution -> ReLU6 -> per-channel FakeQuantize -> DepthWise Convolution is
    # off (simulated IR bit-exact with torch, int8 run 8.5 dB); with either op type float it is not
    "mobilenet_v2_dw_ignored": {"ignored": {"operations": [{"type": "DepthWiseConvolution"}]}},
}


# ---------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    family: str
    quantized: bool = False
    fq: int | None = None
    torch_sqnr: float | None = None
    ir_sqnr: float | None = None
    int8_share: float | None = None
    check_sim_sqnr: float | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def end_to_end(self) -> bool:
        return (self.error is None and self.torch_sqnr is not None and self.ir_sqnr is not None
                and self.ir_sqnr >= self.torch_sqnr - 3.0)


def sqnr(out: np.ndarray, ref: np.ndarray) -> float:
    out, ref = out.astype(np.float64), ref.astype(np.float64)
    noise = float(np.square(out - ref).sum())
    return math.inf if noise == 0 else 10 * math.log10(float(np.square(ref).sum()) / noise)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line[:160]}"


def run_family(name: str, workdir: Path, seed: int = 0) -> Row:
    import openvino as ov
    from torchpqt.exporters import openvino as ov_export

    row, start, stage = Row(name), time.perf_counter(), "build"
    try:
        torch.manual_seed(seed)
        model, make_inputs, transformer = FAMILIES[name]()
        model.eval()
        g = torch.Generator().manual_seed(seed + 1)
        calibration = [make_inputs(g) for _ in range(CALIBRATION)]
        evaluation = [make_inputs(g) for _ in range(EVALUATION)]
        params = {"target_device": "CPU", "stat_subset_size": CALIBRATION}
        if transformer:
            params["model_type"] = "transformer"
        params.update(EXTRA_PARAMS.get(name, {}))
        config = {"name": "DefaultQuantization", "params": params}
        stage = "plan"
        torchpqt.plan(model, calibration[0], config)
        stage = "quantize"
        qmodel = torchpqt.quantize(model, calibration, config, progress=False)
        row.quantized = True
        row.fq = sum(isinstance(m, FakeQuantize) for m in qmodel.modules())
        with torch.no_grad():
            fp32 = np.concatenate([model(*x).numpy().ravel() for x in evaluation])
            fq = np.concatenate([qmodel(*x).numpy().ravel() for x in evaluation])
        row.torch_sqnr = sqnr(fq, fp32)
        stage = "export"
        xml = workdir / name / "model.xml"
        report = ov_export.export(qmodel, evaluation[0], xml)
        row.int8_share = report.int8_share
        row.check_sim_sqnr = report.sim_sqnr_db
        stage = "openvino"
        compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        ir = np.concatenate([np.asarray(compiled([t.numpy() for t in x])[compiled.outputs[0]]).ravel()
                             for x in evaluation])
        row.ir_sqnr = sqnr(ir, fp32)
    except Exception as exc:  # noqa: BLE001 - a sweep: record and go on
        row.error = f"{stage}: {_first_line(exc)}"
    row.seconds = time.perf_counter() - start
    return row


def _fmt(value: float | None, spec: str = ".1f") -> str:
    if value is None:
        return "–"
    return "inf" if math.isinf(value) else format(value, spec)


def _note(r: Row) -> str:
    if r.end_to_end or r.ir_sqnr is None or r.torch_sqnr is None:
        return "ok"
    sim = "" if r.check_sim_sqnr is None else f", simulated IR vs torch {_fmt(r.check_sim_sqnr, '.0f')} dB"
    return f"ok, but the int8 run is {r.torch_sqnr - r.ir_sqnr:.1f} dB below torch{sim}"


def table(rows: list[Row], markdown: bool) -> str:
    head = ["family", "quantize", "FakeQuantize", "torch SQNR dB", "IR SQNR dB", "int8 share", "end to end",
            "result"]
    lines = []
    for r in rows:
        lines.append([r.family, "ok" if r.quantized else "–", "–" if r.fq is None else str(r.fq),
                      _fmt(r.torch_sqnr), _fmt(r.ir_sqnr),
                      "–" if r.int8_share is None else f"{100 * r.int8_share:.0f} %",
                      "yes" if r.end_to_end else "no", r.error or _note(r)])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*line) for line in lines])


def _isa() -> str:
    """The int8-relevant instruction sets of this CPU (Linux flags), e.g. ``avx512_vnni amx_int8``."""
    from torchpqt.hardware.cpu_isa import isa_flags

    return isa_flags()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated subset of: " + ", ".join(FAMILIES))
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    torch.set_num_threads(args.threads)
    logging.getLogger("torchpqt").setLevel(logging.WARNING)
    warnings.simplefilter("default")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = run_family(name, Path(tmp))
            print(f"{name}: {row.error or 'ok'} ({row.seconds:.1f} s)", file=sys.stderr, flush=True)
            rows.append(row)
    print(f"CPU: {platform.machine()}, int8 ISA: {_isa()}; "
          f"torch {torch.__version__}; {sum(r.end_to_end for r in rows)} of {len(rows)} end to end")
    print(table(rows, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
