"""Peak memory that calibration adds, relative to the plain FP32 forward of the same batch.

Two models whose activations are large next to their weights' working set:
  * ``unet``: a 4-level segmentation U-Net (conv-BN-ReLU pairs, max-pool down, transposed-conv up, skip
    concatenations; 7.8M parameters, random weights) on 512×512 RGB,
  * ``bert``: BERT-base (12 layers, hidden 768, 12 heads; random weights from a config) at sequence 512.

Each measurement runs in a fresh Python process (``MALLOC_MMAP_THRESHOLD_`` fixed, so freed tensors go back to
the system and the resident set tracks live memory). The peak is the resident-set high-water mark (``VmHWM``,
reset with ``/proc/self/clear_refs`` just before the step) minus the resident set just before the step:
  * ``fp32``: the plain model's forward of one batch (under no_grad),
  * ``graph``: the captured FP32 graph without observers (BatchNorm folded, attention spelled out as POT's
    IR had it: MatMul, Multiply, Add, SoftMax, MatMul; so BERT's attention scores are materialized where the
    plain model's scaled_dot_product_attention kernel never holds them),
  * ``calibration``: the prepared model's forward of ``--batches`` batches (observers collecting statistics),
    after ``prepare()``; with ``inplace_statistics`` false (POT's API default) and true,
  * ``capture``: what ``prepare()`` itself adds (a copy of the model, torch.export's tracing),
  * ``quantize``: the whole ``quantize()`` call (capture, every calibration pass, convert with its copy).

    python benchmarks/memory.py [--models unet bert] [--batch 1] [--batches 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from torch import nn

SEQ = 512


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """The classic U-Net shape: 32-64-128-256 channels down, a 512-channel bottleneck, and back up."""

    def __init__(self, classes: int = 2, widths=(32, 64, 128, 256)) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        cin = 3
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.bottom = _block(cin, cin * 2)
        self.up, self.merge = nn.ModuleList(), nn.ModuleList()
        cin *= 2
        for w in reversed(widths):
            self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            self.merge.append(_block(2 * w, w))
            cin = w
        self.head = nn.Conv2d(cin, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def build(name: str, batch: int):
    """(model in eval mode with BatchNorm statistics that are not the identity, one calibration batch)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "unet":
        model = UNet()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        return model.eval(), torch.randn(batch, 3, 512, 512, generator=g)
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    cfg = BertConfig(max_position_embeddings=SEQ)  # BERT-base: 12 layers, hidden 768, 12 heads, FFN 3072
    model = BertModel(cfg, add_pooling_layer=False).eval()
    model.config.use_cache = False
    return model, {"input_ids": torch.randint(0, cfg.vocab_size, (batch, SEQ), generator=g),
                   "attention_mask": torch.ones(batch, SEQ, dtype=torch.long)}


def isa() -> str:
    # imported here: the measured subprocesses import torchpqt themselves
    from torchpqt.hardware.cpu_isa import isa_flags

    return isa_flags()


def _call(model, batch):
    return model(**batch) if isinstance(batch, dict) else model(batch)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:  # Linux: VmRSS (now), VmHWM (peak since the last reset)
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def _reset_peak() -> float:
    """Reset VmHWM to the current resident set; returns that resident set (MiB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mib("VmRSS")


def child(name: str, what: str, batch: int, batches: int, inplace: bool) -> dict:
    import torchpqt

    torch.set_num_threads(1)
    model, data = build(name, batch)
    config = {"preset": "performance", "stat_subset_size": batch * batches, "stat_batch_size": batch,
              "inplace_statistics": inplace}
    out = {}
    with torch.no_grad():
        if what == "fp32":
            base = _reset_peak()
            _call(model, data)
            out["fp32"] = _status_mib("VmHWM") - base
        elif what == "graph":
            from torchpqt.graph.capture import capture

            gm = capture(model, data)
            base = _reset_peak()
            _call(gm, data)
            out["graph"] = _status_mib("VmHWM") - base
        elif what == "calibration":
            base = _reset_peak()
            prepared = torchpqt.prepare(model, data, config)
            out["capture"] = _status_mib("VmHWM") - base
            base = _reset_peak()
            for _ in range(batches):
                _call(prepared, data)
            out["calibration"] = _status_mib("VmHWM") - base
        else:
            samples = [data] * batches
            base = _reset_peak()
            torchpqt.quantize(model, samples, {**config, "stat_batch_size": 1} if batch == 1 else config,
                              progress=False)
            out["quantize"] = _status_mib("VmHWM") - base
    return out


def _run(name: str, what: str, batch: int, batches: int, inplace: bool) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    code = (f"import sys, json; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import memory; print(json.dumps(memory.child({name!r}, {what!r}, {batch}, {batches}, {inplace})))")
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"{name} {what} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["unet", "bert"], choices=["unet", "bert"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--no-quantize", action="store_true", help="skip the whole-quantize() measurement")
    args = ap.parse_args()
    report = {"batch": args.batch, "batches": args.batches, "cpu_isa": isa()}
    for name in args.models:
        row = dict(_run(name, "fp32", args.batch, args.batches, False))
        row.update(_run(name, "graph", args.batch, args.batches, False))
        for inplace in (False, True):
            got = _run(name, "calibration", args.batch, args.batches, inplace)
            row[f"capture (inplace={inplace})"] = got["capture"]
            row[f"calibration (inplace={inplace})"] = got["calibration"]
            row[f"calibration/fp32 (inplace={inplace})"] = got["calibration"] / row["fp32"]
            row[f"calibration/graph (inplace={inplace})"] = got["calibration"] / row["graph"]
        if not args.no_quantize:
            row["quantize"] = _run(name, "quantize", args.batch, args.batches, False)["quantize"]
        report[name] = row
        print(name, {k: round(v, 2) for k, v in row.items()}, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
