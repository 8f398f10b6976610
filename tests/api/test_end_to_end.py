"""End to end on real data and a real architecture: a CNN trained on sklearn's digits, and a
HuggingFace BERT built from a small BertConfig (nothing downloaded)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchpqt
from examples.models import DigitsCNN


@pytest.fixture(scope="module")
def digits_model():
    sklearn = pytest.importorskip("sklearn.datasets")
    digits = sklearn.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(12):
        for idx in train[torch.randperm(len(train), generator=g)].split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval(), x[train], x[test], y[test]


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item() * 100


def test_digits_cnn_fake_quant_accuracy_drop_is_at_most_half_a_point(digits_model):
    model, x_train, x_test, y_test = digits_model
    fp32 = _accuracy(model, x_test, y_test)
    assert fp32 > 90, f"the FP32 model did not train ({fp32:.1f} %)"
    calib = [x_train[i:i + 1] for i in range(300)]
    q = torchpqt.quantize(model, calib, {"preset": "performance", "stat_subset_size": 300}, progress=False)
    drop = fp32 - _accuracy(q, x_test, y_test)
    assert drop <= 0.5, f"fp32 {fp32:.2f} %, int8 drop {drop:.2f} points"
    assert sum(isinstance(m, torchpqt.FakeQuantize) for m in q.modules()) >= 8


def test_bert_with_attention_mask_quantizes_and_int_inputs_stay_float_free():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(6):
        mask = torch.ones(1, 10, dtype=torch.long)
        mask[0, torch.randint(5, 10, (1,), generator=g).item():] = 0  # padded tail
        data.append({"input_ids": torch.randint(0, 120, (1, 10), generator=g), "attention_mask": mask})
    q = torchpqt.quantize(model, data, {"preset": "mixed", "model_type": "transformer"}, progress=False)
    plan = q.torchpqt_plan
    for p in plan.points:
        val = p.site.tensor.meta.get("val")
        assert p.site.tensor.op != "placeholder", f"{p.name} quantizes a network input (ids / mask)"
        assert val is None or val.dtype.is_floating_point, p.name
    act_matmul = [p for p in plan.points if p.site.act_matmul]
    assert act_matmul and all(p.spec.mode == "symmetric" for p in act_matmul)
    with torch.no_grad():
        ref = model(**data[0]).last_hidden_state
        out = q(**data[0]).last_hidden_state
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.99
    # a different sequence length still runs (dynamic shapes)
    longer = {"input_ids": torch.randint(0, 120, (2, 14), generator=g), "attention_mask": torch.ones(2, 14,
                                                                                                     dtype=torch.long)}
    assert q(**longer).last_hidden_state.shape == (2, 14, 32)


def test_torch_transformer_encoder_with_symbolic_sizes_quantizes():
    # nn.MultiheadAttention computes with symbolic sizes (SymInt/SymFloat nodes): never FakeQuantize points
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2).eval()
    data = [torch.randn(1, 10, 32) for _ in range(4)]
    q = torchpqt.quantize(enc, data, {"model_type": "transformer"}, progress=False)
    for p in q.torchpqt_plan.points:  # nodes torchpqt created itself carry no metadata
        val = p.site.tensor.meta.get("val")
        assert val is None or isinstance(val, torch.Tensor), p.name
    with torch.no_grad():
        ref, out = enc(data[0]), q(data[0])
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.99


def test_gpt2_without_cache_quantizes_and_a_cache_output_gets_a_clear_error():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    data = [{"input_ids": torch.randint(0, 100, (1, 8))} for _ in range(3)]
    with pytest.raises(torchpqt.CaptureError, match="use_cache"):
        torchpqt.prepare(model, data[0])
    model.config.use_cache = False
    q = torchpqt.quantize(model, data, {"model_type": "transformer"}, progress=False)
    assert sum(isinstance(m, torchpqt.FakeQuantize) for m in q.modules()) > 10
