"""Speech for GNA: a TDNN keyword spotter quantized with POT's GNA rules (16-bit activations).

    pip install -e '.[openvino,examples]'
    python examples/speech_gna.py [--quick] [--output-dir results/speech_gna]

The features are synthetic log-mel spectrograms (40 bands × 49 frames, as a 1 s utterance at a
20 ms hop): each of six "keywords" is a fixed pattern of formant tracks, spoken at a random speed,
offset and loudness over background noise. The model is a time-delay network (dilated Conv1d over
time), average pooling over time and a linear classifier, trained here in seconds.

``target_device: GNA`` quantizes as POT did for Intel's Gaussian & Neural Accelerator: 16-bit
activations, weights of 8 or 16 bits per op, 32-bit outputs and OverflowCorrection. Current
OpenVINO has no GNA plugin, so export() checks the IR structurally, as the plugin would have read
it (every FakeQuantize with its levels), and the IR runs on CPU, which ignores FakeQuantize above 256
levels: the table also shows the torch fake-quant model, which computes GNA's grid exactly.
"""

import time
from pathlib import Path

import _common as common  # examples/_common.py: training loop, OpenVINO helpers, the result table
import torch
from torch import nn
from torchpqt.exporters import openvino as ov_export

import torchpqt

BANDS, FRAMES, KEYWORDS = 40, 49, 6

# GNA: the hardware rules come from target_device; POT's GNA presets are "performance" and
# "accuracy" (the API keeps what you give). 100 utterances for the ranges.
CONFIG = {"name": "DefaultQuantization",
          "params": {"target_device": "GNA", "preset": "performance", "stat_subset_size": 100}}


def utterances(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` spectrograms (N, BANDS, FRAMES) and their keyword labels (N,)."""
    words = torch.Generator().manual_seed(1234)  # the keywords' formant tracks: the same in every split
    tracks = torch.rand(KEYWORDS, 3, 4, generator=words)  # 3 formants, 4 control points in frequency
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(KEYWORDS, (count,), generator=g)
    bands = torch.arange(BANDS).float()[:, None]
    out = []
    for k in labels.tolist():
        length = int(20 + 20 * torch.rand(1, generator=g))  # frames of speech: a random speed
        start = int(torch.randint(FRAMES - length + 1, (1,), generator=g))
        t = torch.linspace(0, 3, length)
        spec = torch.zeros(BANDS, FRAMES)
        for f in range(3):
            points = tracks[k, f] * BANDS
            centre = torch.stack([torch.lerp(points[min(int(x), 3)], points[min(int(x) + 1, 3)], x - int(x))
                                  for x in t.tolist()])
            spec[:, start:start + length] += torch.exp(-((bands - centre) / 1.5) ** 2) * (1.0 - 0.25 * f)
        loudness = 0.2 + 0.8 * torch.rand(1, generator=g)
        noise = 1.2 * torch.randn(BANDS, FRAMES, generator=g)
        out.append(torch.log1p(4 * loudness * spec + noise.abs()) - 0.5)
    return torch.stack(out), labels


class TDNN(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(BANDS, width, 5), nn.ReLU(),
            nn.Conv1d(width, width, 3, dilation=2), nn.ReLU(),
            nn.Conv1d(width, width, 3, dilation=4), nn.ReLU())
        self.classifier = nn.Linear(width, KEYWORDS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, BANDS, FRAMES) -> keyword logits
        return self.classifier(self.layers(x).mean(-1))


def main() -> None:
    args = common.example_args(__doc__, "speech_gna")
    common.quiet_logging()
    out = Path(args.output_dir)
    steps, n_eval = (150, 200) if args.quick else (400, 1000)

    train_x, train_y = utterances(1024, seed=1)
    model = common.fit(TDNN(), lambda s: (train_x[s % 32 * 32:][:32], train_y[s % 32 * 32:][:32]),
                       nn.functional.cross_entropy, steps)
    calibration = list(utterances(32 if args.quick else 100, seed=2)[0].split(1))
    test_x, test_y = utterances(n_eval, seed=3)

    t0 = time.perf_counter()
    qmodel = torchpqt.quantize(model, calibration, CONFIG)
    seconds = time.perf_counter() - t0
    xml = out / "tdnn_gna.xml"
    # For a GNA target the check is structural (the GNA rules the plugin enforced: every FakeQuantize
    # of the torch model is in the IR with its levels) and raises ExportError if one is missing.
    ov_export.export(qmodel, calibration[0], xml, check=True)  # logs its report

    def accuracy(logits: torch.Tensor) -> float:
        return (logits.argmax(1) == test_y).float().mean().item()

    with torch.no_grad():
        fp32, fake_quant = accuracy(model(test_x)), accuracy(qmodel(test_x))
    int8 = accuracy(common.run_ir(common.compile_ir(xml), test_x)[0])
    common.report(out, "accuracy", fp32, int8, seconds, int8_torch_fake_quant=fake_quant,
                  test_utterances=n_eval, **common.ir_latencies(model, calibration[0], xml))


if __name__ == "__main__":
    main()
