"""Latency of an int8 OpenVINO IR against its fp32 IR, for a ~5M-parameter conv net built here.

Both IRs are exported with ``torchpqt.exporters.openvino``, compiled in the same process and
timed interleaved (one fp32 request, one int8 request, repeated), so that CPU frequency and
load changes hit both alike; the medians and their ratio are printed.

    python benchmarks/latency.py --iterations 200 --batch 1 --size 224
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torchpqt.quant.fake_quantize import FakeQuantize

CHANNELS = [(3, 64, 2), (64, 128, 2), (128, 256, 2), (256, 256, 1), (256, 512, 2), (512, 512, 1)]


class ConvNet(torch.nn.Module):
    """Six 3x3 convolutions with ReLU, global pooling and a 1000-way classifier (~5.0M parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(i, o, 3, stride=s, padding=1) for i, o, s in CHANNELS)
        self.fc = torch.nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class QuantConvNet(torch.nn.Module):
    """The same net with POT-style FakeQuantize: per-channel symmetric weights (255 levels),
    per-tensor activations (256 levels) from one calibration batch."""

    def __init__(self, net: ConvNet, calibration: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        layers = [*net.convs, net.fc]
        self.fq_w = torch.nn.ModuleList(self._weight_fq(layer.weight) for layer in layers)
        inputs = self._layer_inputs(net, calibration)
        self.fq_a = torch.nn.ModuleList(
            FakeQuantize(256, 0.0, float(x.max())) if x.min() >= 0
            else FakeQuantize(256, -float(x.abs().max()) * 128 / 127, float(x.abs().max())) for x in inputs)

    @staticmethod
    def _weight_fq(weight: torch.Tensor) -> FakeQuantize:
        dims = tuple(range(1, weight.dim()))
        m = weight.detach().abs().amax(dim=dims, keepdim=True).clamp_min(8e-5)
        return FakeQuantize(255, -m, m)

    @staticmethod
    def _layer_inputs(net: ConvNet, x: torch.Tensor) -> list[torch.Tensor]:
        seen = []
        hooks = [m.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
                 for m in [*net.convs, net.fc]]
        with torch.no_grad():
            net(x)
        for hook in hooks:
            hook.remove()
        return seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, fq_a, fq_w in zip(self.net.convs, self.fq_a, self.fq_w):
            x = F.relu(F.conv2d(fq_a(x), fq_w(conv.weight), conv.bias, stride=conv.stride, padding=conv.padding))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.linear(self.fq_a[-1](x), self.fq_w[-1](self.net.fc.weight), self.net.fc.bias)


def _time_interleaved(requests: dict, feed: np.ndarray, iterations: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for request in requests.values():
            request.infer([feed])
    times: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(iterations):
        for name, request in requests.items():
            start = time.perf_counter()
            request.infer([feed])
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="timed requests per model (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per model first (default 20)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--threads", type=int, default=0, help="CPU inference threads, 0 = plugin default")
    parser.add_argument("--inference-precision", choices=["f32", "default"], default="f32",
                        help="f32 (default) keeps the fp32 IR in f32; 'default' lets the plugin pick "
                             "(bf16 on CPUs with AMX/avx512_bf16)")
    parser.add_argument("--output-dir", type=Path, default=None, help="keep the IRs here (default: temp dir)")
    args = parser.parse_args(argv)

    import openvino as ov
    from torchpqt.exporters import openvino as ov_export

    torch.manual_seed(0)
    net = ConvNet().eval()
    example = torch.randn(args.batch, 3, args.size, args.size)
    qnet = QuantConvNet(net, example).eval()
    print(f"model: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, input {tuple(example.shape)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output_dir or Path(tmp)
        reports = {"fp32": ov_export.export(net, example, out / "fp32" / "model.xml"),
                   "int8": ov_export.export(qnet, example, out / "int8" / "model.xml")}
        print(reports["int8"])
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if args.inference_precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if args.threads:
            config["INFERENCE_NUM_THREADS"] = args.threads
        core = ov.Core()
        requests = {name: core.compile_model(str(r.path), "CPU", config).create_infer_request()
                    for name, r in reports.items()}
        times = _time_interleaved(requests, example.numpy(), args.iterations, args.warmup)
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    for name, ms in median.items():
        print(f"{name}: median {ms:.3f} ms over {args.iterations} requests")
    print(f"int8 speed-up (fp32 median / int8 median): {median['fp32'] / median['int8']:.2f}x")


if __name__ == "__main__":
    main()
