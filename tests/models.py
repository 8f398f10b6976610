"""Small deterministic test models and calibration data shared by the tests.

Every builder seeds torch itself, returns an eval-mode model and downloads nothing, so the same call gives
the same weights on every machine. ``MODELS`` maps a name to ``(builder, input kind)``;
``calibration_data(name, n)`` gives ``n`` seeded samples for that model (a list of tensors with batch
dimension 1). The POT parity goldens (``tests/data/pot/``) were recorded from exactly these models and
data: changing a builder or the data means regenerating them (``tests/pot_parity/make_pot_goldens.py``).

The models avoid linear conv -> 1x1 conv chains (a ReLU sits in between), so POT's
ActivationChannelAlignment (spec §10.3) leaves the weights alone and ranges stay comparable; except
``align_chain``, made for alignment (recorded in tests/data/pot/biases/ only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODELS", "build", "calibration_data", "example_input", "small_transformer", "tiny_cnn"]

_SEED = 20231


def _seeded(builder):
    def wrapped() -> nn.Module:
        torch.manual_seed(_SEED)
        model = builder()
        return model.eval()

    wrapped.__name__ = builder.__name__
    wrapped.__doc__ = builder.__doc__
    return wrapped


def _random_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """Non-trivial BatchNorm statistics and affine parameters, so folding really changes the weights."""
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c) * 0.5)
        bn.running_var.copy_(torch.rand(c) * 1.5 + 0.25)
        bn.weight.copy_(torch.rand(c) * 1.5 + 0.5)
        bn.bias.copy_(torch.randn(c) * 0.3)
    return bn


# --- tiny_cnn ------------------------------------------------------------------------------------------


class TinyCNN(nn.Module):
    """conv-bn-relu stem, residual add of two conv branches, depthwise conv + relu, concat of two branches
    into a conv, maxpool, global average pooling, flatten, linear classifier. Input [1, 3, 16, 16]."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), _random_bn(nn.BatchNorm2d(8)),
                                  nn.ReLU())
        self.res_a = nn.Conv2d(8, 8, 3, padding=1)
        self.res_b = nn.Conv2d(8, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.cat_a = nn.Conv2d(8, 6, 3, padding=1)
        self.cat_b = nn.Conv2d(8, 6, 3, padding=1)
        self.fuse = nn.Conv2d(12, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.res_a(x) + self.res_b(x))
        x = F.relu(self.dw(x))
        x = torch.cat([F.relu(self.cat_a(x)), self.cat_b(x)], dim=1)
        x = self.pool(F.relu(self.fuse(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


@_seeded
def tiny_cnn() -> nn.Module:
    """The TinyCNN above, seeded."""
    return TinyCNN()


# --- small_transformer ---------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def _split(self, t):
        b, s, _ = t.shape
        return t.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        attn = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(attn, v).transpose(1, 2)
        b, s = ctx.shape[0], ctx.shape[1]
        return self.o(ctx.reshape(b, s, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SmallTransformer(nn.Module):
    """One encoder block in plain torch ops over int64 input_ids [1, 8] (vocab 32, width 16, 2 heads)."""

    def __init__(self, vocab: int = 32, dim: int = 16, heads: int = 2, hidden: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.attn = SelfAttention(dim, heads)
        self.ln1 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, hidden)
        self.ln2 = nn.LayerNorm(dim)
        with torch.no_grad():
            for ln in (self.ln1, self.ln2):
                ln.weight.copy_(torch.rand(dim) + 0.5)
                ln.bias.copy_(torch.randn(dim) * 0.1)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.mlp(x))


@_seeded
def small_transformer() -> nn.Module:
    """The SmallTransformer above, seeded."""
    return SmallTransformer()


# --- probes for single placement rules -----------------------------------------------------------------


class ConcatConv(nn.Module):
    """Concat of an unsigned (ReLU) and a signed branch feeding a conv: unified scales (spec §4.7)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.c(torch.cat([F.relu(self.a(x)), self.b(x)], 1))


class EltwiseConst(nn.Module):
    """Eltwise ops with a constant tensor operand that OpenVINO's converter keeps (spec §7.2): an Add(c)
    after a maxpool and a Multiply(c) after a sigmoid. Both are quantized on all ports; the constant gets
    a weights-group FQ."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.offset = nn.Parameter(torch.randn(1, 4, 1, 1))
        self.gain = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.conv1(x)), 2) + self.offset
        y = torch.sigmoid(y) * self.gain
        return self.conv2(F.relu(y))


class ConstFusion(nn.Module):
    """Per-channel Multiply(c) right next to convs. OpenVINO's converter folds both into conv weights
    (``relu(conv1) * scale -> conv2`` into conv2's input channels, ``conv2 * gain`` into its output
    channels), so POT sees neither Multiply and computes conv2's weight ranges on the folded weights."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(1, 4, 1, 1) + 0.5)
        self.gain = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(self, x):
        y = F.relu(self.conv1(x)) * self.scale
        return self.conv3(F.relu(self.conv2(y) * self.gain))


class PreprocScaleShift(nn.Module):
    """Parameter -> Mul(c) -> Add(c) -> Conv: the preprocessing is skipped, the FQ sits after the Add
    (spec §7.4 inputs patterns, §7.5)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(1, 3, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.randn(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv(x * self.scale + self.shift)))


class PreprocSubMul(nn.Module):
    """Parameter -> Subtract(c) -> Multiply(c) -> Conv: Subtract skipped, Multiply quantized (spec §7.5)."""

    def __init__(self):
        super().__init__()
        self.mean = nn.Parameter(torch.randn(1, 3, 1, 1))
        self.inv_std = nn.Parameter(torch.rand(1, 3, 1, 1) + 0.5)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv((x - self.mean) * self.inv_std)


class MatMulConst(nn.Module):
    """``x @ W`` with constant W [K, N]: POT transposes it to [N, K], per-channel over N (§4.5, §7.1)."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(16, 12) * 0.3)
        self.w2 = nn.Parameter(torch.randn(12, 6) * 0.3)

    def forward(self, x):
        return F.relu(x @ self.w1) @ self.w2


class ConvTranspose(nn.Module):
    """ConvTranspose2d: weights [Cin, Cout, kH, kW], per-channel axis 1 (spec §4.3, §4.5)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.head = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.head(F.relu(self.up(F.relu(self.conv(x)))))


class GroupedConv(nn.Module):
    """A grouped, not depthwise, conv (groups=2): Convolution with per-tensor activations (spec §7.3)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.head(F.relu(self.grouped(F.relu(self.conv(x)))))


class ActEltwise(nn.Module):
    """Sigmoid and Tanh branches joined by an activation x activation Multiply and Add, then a conv
    (the GNA activation/eltwise rules of spec §7.3: q32_a inputs and q16_o outputs on Sigmoid/Tanh,
    q32_o outputs on Add/Multiply)."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        a, b = torch.sigmoid(self.conv_a(x)), torch.tanh(self.conv_b(x))
        return self.head(a * b + a)


class MobileNetBlock(nn.Module):
    """conv-bn-relu6, depthwise conv-bn-relu6, linear 1x1 conv-bn, residual add, stride-2 head conv.
    ReLU6 is an OpenVINO Clamp (spec §7.4 CPU patterns); the 1x1 conv follows a Clamp, so no channel
    alignment (spec §10.3)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), _random_bn(nn.BatchNorm2d(8)),
                                  nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                                _random_bn(nn.BatchNorm2d(8)), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), _random_bn(nn.BatchNorm2d(8)))
        self.head = nn.Conv2d(8, 4, 3, stride=2, padding=1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(F.relu(x + self.pw(self.dw(x))))


class HardSwish(nn.Module):
    """conv -> hardswish -> conv (the HSwish patterns of spec §7.4), and a hardswish on the input."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1)
        self.act = nn.Hardswish()

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


class GroupedConvTranspose(nn.Module):
    """ConvTranspose2d with groups=2: OpenVINO GroupConvolutionBackpropData, weights [G, Cin/G, Cout/G, kH,
    kW] in the IR (spec §4.5)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2)
        self.head = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        return self.head(F.relu(self.up(F.relu(self.conv(x)))))


class UpsampleConv(nn.Module):
    """nn.Upsample (nearest, and bilinear) feeding convs: Interpolate is input-only quantizable
    (spec §7.2)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.up_bl = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.head_a, self.head_b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return self.head_a(self.up(F.relu(y))) + self.head_b(self.up_bl(y))


class Concat3Pool(nn.Module):
    """Concat of three branches (ReLU conv, signed conv, maxpool of the input) into a conv (spec §4.7
    unified scales across the branches, FQs propagated up through MaxPool and Concat)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.c = nn.Conv2d(11, 4, 3, padding=1)

    def forward(self, x):
        return self.c(torch.cat([F.relu(self.a(x)), self.b(x), self.pool(x)], 1))


class TinyBert(nn.Module):
    """HuggingFace BertModel (vocab 100, hidden 32, 2 layers, 2 heads, intermediate 64, 32 positions, eager
    attention) over int64 input_ids and attention_mask [1, 8]; returns last_hidden_state and pooler_output."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, attn_implementation="eager")
        self.bert = BertModel(cfg)
        # HF initializes biases to 0 and LayerNorm to (1, 0), which a trained model does not have: the
        # converter drops an Add of zeros (and Multiply by ones), so the IR would lose the bias Adds that
        # POT's patterns look for (spec §7.4). Randomize them.
        with torch.no_grad():
            for m in self.bert.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.copy_(torch.rand(m.weight.shape) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape) * 0.1)
                elif isinstance(m, nn.Linear):
                    m.bias.copy_(torch.randn(m.bias.shape) * 0.05)

    def forward(self, input_ids, attention_mask):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


class BagOfWords(nn.Module):
    """Bag-of-words text classifier over int64 token ids [1, 8] (vocab 40, width 16): embedding, pooling
    over the tokens, linear head. ``pool``: ``mean`` (Gather -> ReduceMean -> MatMul), ``sum``
    (ReduceSum), ``bag`` (``nn.EmbeddingBag(mode='mean')``), ``mean_ln`` (mean -> LayerNorm -> linear) or
    ``mean_tokens`` (mean, and a second output: a softmax over each token's embedding, which keeps POT from
    moving the FakeQuantize of the ReduceMean onto the table; POT 2023.3 fails on ``mean`` and
    ``mean_ln``, see tests/graph/test_pot_parity.py)."""

    def __init__(self, pool: str = "mean", vocab: int = 40, dim: int = 16, classes: int = 4):
        super().__init__()
        self.pool = pool
        self.embed = nn.EmbeddingBag(vocab, dim, mode="mean") if pool == "bag" else nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim) if pool == "mean_ln" else None
        self.head = nn.Linear(dim, classes)
        if self.norm is not None:
            with torch.no_grad():
                self.norm.weight.copy_(torch.rand(dim) + 0.5)
                self.norm.bias.copy_(torch.randn(dim) * 0.1)

    def forward(self, input_ids):
        if self.pool == "bag":
            return self.head(self.embed(input_ids))
        x = self.embed(input_ids)
        tokens = x
        x = x.sum(dim=1) if self.pool == "sum" else x.mean(dim=1)
        if self.norm is not None:
            x = self.norm(x)
        if self.pool == "mean_tokens":
            return self.head(x), torch.softmax(tokens, -1)
        return self.head(x)


class MaskedEncoder(nn.Module):
    """Embedding + single-head self-attention with an additive padding mask + LayerNorm + GELU MLP, written
    with plain ops; inputs ``(ids, mask)`` (int64 [B, L] each). Used by the placement and export tests."""

    def __init__(self, d: int = 16):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            self.emb = nn.Embedding(50, d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, ids, mask):
        x = self.emb(ids)
        scores = torch.matmul(self.q(x), self.k(x).transpose(-2, -1)) * 0.25
        scores = scores + (1.0 - mask[:, None, :].float()) * -1e4
        att = torch.matmul(torch.softmax(scores, -1), self.v(x))
        x = self.ln1(x + self.o(att))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


class AlignChain(nn.Module):
    """A MobileNetV2-style linear bottleneck that POT's ActivationChannelAlignment (spec §10.3) aligns: the
    projection 1x1 conv-bn (no activation) feeds only the next expand 1x1 conv-bn-relu6; and a linear 1x1
    conv feeding a bias-less 3x3 conv without padding (a second pair: POT asks for no padding, stride 1 and
    dilation 1, not for a 1x1 kernel; the consumer gets the zero bias POT inserts, which mean alignment fills).
    Input [1, 3, 8, 8]."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), _random_bn(nn.BatchNorm2d(8)),
                                  nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                                _random_bn(nn.BatchNorm2d(8)), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(8, 6, 1, bias=False), _random_bn(nn.BatchNorm2d(6)))
        self.expand = nn.Sequential(nn.Conv2d(6, 12, 1, bias=False), _random_bn(nn.BatchNorm2d(12)), nn.ReLU6())
        self.mid = nn.Conv2d(12, 8, 1)
        self.tail = nn.Conv2d(8, 4, 3, bias=False)
        with torch.no_grad():  # channel ranges that differ by orders of magnitude, so scales get aligned
            self.project[1].weight.mul_(torch.tensor([0.05, 0.3, 1.0, 2.0, 5.0, 0.6]))
            self.mid.weight.mul_(torch.tensor([0.1, 3.0, 1.0, 0.5, 8.0, 1.0, 0.2, 2.0]).reshape(8, 1, 1, 1))
            self.mid.bias.add_(torch.randn(8))

    def forward(self, x):
        x = self.project(self.dw(self.stem(x)))
        return self.tail(self.mid(self.expand(x)))


class PaddedConvs(nn.Module):
    """Padded convs of several kernels on a small input, where the zero border is a large share of each
    tensor: 3x3 pad 1, 5x5 pad 2, 3x3 pad 1 stride 2, each followed by a ReLU, then a 1x1 conv. Small biases,
    so FastBiasCorrection's relative threshold is tight (spec §10.1). Input [1, 3, 8, 8]."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 5, padding=2)
        self.c3, self.c4 = nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            for conv in (self.c1, self.c2, self.c3):
                conv.bias.mul_(0.3)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.c4(F.relu(self.c3(x)))


class FeatureTransformer(SmallTransformer):
    """SmallTransformer's encoder block on float features [1, 8, 16] (no embedding). POT 2023.3's
    BiasCorrection crashes when the first weighted layers read a Gather (small_transformer: "The data type
    for out port 0 of node /embed/Gather/parameter is not defined"), so its recording uses this model."""

    def forward(self, x):
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.mlp(x))


class ZeroBias(nn.Module):
    """Layers POT's bias corrections leave alone (spec §10.1): a conv whose bias has one exactly-zero element,
    a bias-less conv (POT inserts a zero bias), a Linear with one zero bias element and a bias-less Linear;
    an ordinary conv and Linear as controls. Input [1, 3, 8, 8]."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.conv_c = nn.Conv2d(6, 6, 1)
        self.fc_a, self.fc_b, self.fc_c = nn.Linear(6, 8), nn.Linear(8, 8, bias=False), nn.Linear(8, 4)
        with torch.no_grad():
            self.conv_a.bias[2] = 0.0
            self.fc_a.bias[5] = 0.0

    def forward(self, x):
        x = F.relu(self.conv_c(F.relu(self.conv_b(F.relu(self.conv_a(x))))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc_c(F.relu(self.fc_b(F.relu(self.fc_a(x)))))


def _probe(cls):
    def builder() -> nn.Module:
        return cls()

    builder.__name__ = cls.__name__
    builder.__doc__ = cls.__doc__
    return _seeded(builder)


concat_conv = _probe(ConcatConv)
eltwise_const = _probe(EltwiseConst)
const_fusion = _probe(ConstFusion)
preproc_scale_shift = _probe(PreprocScaleShift)
preproc_sub_mul = _probe(PreprocSubMul)
matmul_const = _probe(MatMulConst)
conv_transpose = _probe(ConvTranspose)
grouped_conv = _probe(GroupedConv)
act_eltwise = _probe(ActEltwise)
mobilenet_block = _probe(MobileNetBlock)
hardswish = _probe(HardSwish)
grouped_conv_transpose = _probe(GroupedConvTranspose)
upsample_conv = _probe(UpsampleConv)
concat3_pool = _probe(Concat3Pool)
tiny_bert = _probe(TinyBert)
align_chain = _probe(AlignChain)
padded_convs = _probe(PaddedConvs)
zero_bias = _probe(ZeroBias)
feature_transformer = _probe(FeatureTransformer)


def _bag_of_words(pool: str):
    def builder() -> nn.Module:
        return BagOfWords(pool)

    builder.__name__ = f"bow_{pool}"
    builder.__doc__ = BagOfWords.__doc__
    return _seeded(builder)


bow_mean, bow_sum, bow_bag, bow_mean_ln, bow_mean_tokens = (
    _bag_of_words(p) for p in ("mean", "sum", "bag", "mean_ln", "mean_tokens"))

# name -> (builder, input: ("image", shape) | ("ids", shape, vocab) | ("ids+mask", shape, vocab) |
#                          ("features", shape))
MODELS = {
    "tiny_cnn": (tiny_cnn, ("image", (3, 16, 16))),
    "small_transformer": (small_transformer, ("ids", (8,), 32)),
    "concat_conv": (concat_conv, ("image", (3, 8, 8))),
    "eltwise_const": (eltwise_const, ("image", (3, 8, 8))),
    "const_fusion": (const_fusion, ("image", (3, 8, 8))),
    "preproc_scale_shift": (preproc_scale_shift, ("image", (3, 8, 8))),
    "preproc_sub_mul": (preproc_sub_mul, ("image", (3, 8, 8))),
    "matmul_const": (matmul_const, ("features", (4, 16))),
    "conv_transpose": (conv_transpose, ("image", (3, 8, 8))),
    "grouped_conv": (grouped_conv, ("image", (3, 8, 8))),
    "act_eltwise": (act_eltwise, ("image", (3, 8, 8))),
    "mobilenet_block": (mobilenet_block, ("image", (3, 8, 8))),
    "hardswish": (hardswish, ("image", (3, 8, 8))),
    "grouped_conv_transpose": (grouped_conv_transpose, ("image", (3, 8, 8))),
    "upsample_conv": (upsample_conv, ("image", (3, 8, 8))),
    "concat3_pool": (concat3_pool, ("image", (3, 8, 8))),
    "tiny_bert": (tiny_bert, ("ids+mask", (8,), 100)),
    "bow_mean": (bow_mean, ("ids", (8,), 40)),
    "bow_sum": (bow_sum, ("ids", (8,), 40)),
    "bow_bag": (bow_bag, ("ids", (8,), 40)),
    "bow_mean_ln": (bow_mean_ln, ("ids", (8,), 40)),
    "bow_mean_tokens": (bow_mean_tokens, ("ids", (8,), 40)),
    "align_chain": (align_chain, ("image", (3, 8, 8))),
    "padded_convs": (padded_convs, ("image", (3, 8, 8))),
    "zero_bias": (zero_bias, ("image", (3, 8, 8))),
    "feature_transformer": (feature_transformer, ("features", (8, 16))),
}


def build(name: str) -> nn.Module:
    """The seeded, eval-mode model called ``name`` (a key of ``MODELS``)."""
    return MODELS[name][0]()


def calibration_data(model_name: str, n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` seeded samples for ``model_name``, each a tensor with batch dimension 1.

    Images and features are standard normal float32 (images get a per-sample scale in [0.5, 2) so the
    aggregators see different ranges); ids are int64 uniform over the vocabulary. ``ids+mask`` samples are
    tuples ``(input_ids, attention_mask)``: a random length in [4, len], padded with id 0 and mask 0.
    """
    kind = MODELS[model_name][1]
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        if kind[0] == "ids":
            samples.append(torch.randint(0, kind[2], (1, *kind[1]), generator=g, dtype=torch.int64))
        elif kind[0] == "ids+mask":
            ids = torch.randint(1, kind[2], (1, *kind[1]), generator=g, dtype=torch.int64)
            length = int(torch.randint(4, kind[1][-1] + 1, (), generator=g))
            mask = torch.ones_like(ids)
            mask[..., length:] = 0
            ids[..., length:] = 0
            samples.append((ids, mask))
        else:
            scale = 0.5 + 1.5 * torch.rand((), generator=g)
            samples.append(torch.randn((1, *kind[1]), generator=g) * scale)
    return samples


def example_input(model_name: str) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """One sample (the first calibration sample)."""
    return calibration_data(model_name, 1)[0]
