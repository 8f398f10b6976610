"""Cases of the 2-rank calibration tests (tests/distributed): each rank quantizes its shard, and the test
compares every rank's FakeQuantize parameters with one process on the concatenated shards.

Imported by name in the spawned ranks (torch.multiprocessing passes the test's sys.path on)."""

from __future__ import annotations

import datetime
import faulthandler
import os
import traceback

import models
import torch

import torchpqt

MEDIAN_HL = {"activations": {"range_estimator": {"min": {"aggregator": "median"},
                                                 "max": {"aggregator": "hl_estimator"}}}}
MEAN_MAX = {"activations": {"range_estimator": {"min": {"type": "min", "aggregator": "mean"},
                                                "max": {"type": "max", "aggregator": "mean"}}}}

#: name -> (model, samples on rank 0, samples on rank 1, config, how: "quantize" or "loop" (prepare, own loop,
#: convert(prepared, shard)))
CASES = {
    "cnn-median-hl-subset": ("tiny_cnn", 6, 6, {**MEDIAN_HL, "stat_subset_size": 8}, "quantize"),
    "cnn-mean-loop": ("tiny_cnn", 4, 5, MEAN_MAX, "loop"),
    "bert-median-hl-subset": ("tiny_bert", 4, 5, {**MEDIAN_HL, "stat_subset_size": 7}, "quantize"),
    # channel alignment's second pass and BiasCorrection's data reads (gathered)
    "align-two-pass-bias": ("align_chain", 5, 6, {"use_fast_bias": False, "stat_subset_size": 10,
                                                  "alignment_pass": "separate"}, "quantize"),
    # one pass: the aligned tensors' statistics derived from the ranks' merged per-sample values
    "align-one-pass-median-hl": ("align_chain", 4, 6, {**MEDIAN_HL, "stat_batch_size": 2}, "quantize"),
}

SLOW_CASES = {
    "cnn-default-subset": ("tiny_cnn", 5, 7, {"stat_subset_size": 9}, "quantize"),
    "cnn-mean-batch2": ("tiny_cnn", 4, 6, {**MEAN_MAX, "stat_batch_size": 2}, "quantize"),
    "cnn-shuffle-median-hl": ("tiny_cnn", 6, 5, {**MEDIAN_HL, "shuffle_data": True, "seed": 3,
                                                 "stat_subset_size": 7}, "quantize"),
    "bert-mean-loop": ("tiny_bert", 3, 4, MEAN_MAX, "loop"),
    "align-layerwise": ("align_chain", 6, 6, {"use_layerwise_tuning": True, "stat_subset_size": 10}, "quantize"),
}


def all_cases() -> dict:
    return {**CASES, **SLOW_CASES}


def shards(name: str) -> tuple[list, list]:
    model_name, n0, n1, _, _ = all_cases()[name]
    data = models.calibration_data(model_name, n0 + n1, seed=11)
    return data[:n0], data[n0:]


def fq_params(q) -> dict[str, torch.Tensor]:
    """Every FakeQuantize parameter and every weight/bias of the quantized model, by name."""
    out = {}
    for name, module in q.named_modules():
        if isinstance(module, torchpqt.FakeQuantize):
            for attr in ("input_low", "input_high", "output_low", "output_high"):
                out[f"{name}.{attr}"] = getattr(module, attr).detach().clone()
    for name, t in [*q.named_parameters(), *q.named_buffers()]:
        out.setdefault(name, t.detach().clone())
    return out


def run_case(name: str, data, *, distributed: bool | None = None) -> dict[str, torch.Tensor]:
    model_name, _, _, config, how = all_cases()[name]
    model = models.build(model_name)
    if how == "loop":
        prepared = torchpqt.prepare(model, models.example_input(model_name), config)
        with torch.no_grad():
            for x in data:
                prepared(*(x if isinstance(x, tuple) else (x,)))
        return fq_params(torchpqt.convert(prepared, data, progress=False, distributed=distributed))
    return fq_params(torchpqt.quantize(model, data, config, progress=False, distributed=distributed))


def worker(rank: int, world: int, init_file: str, out_dir: str, names: list[str], errors: bool = True) -> None:
    """One rank: quantize its shard of every case, save the parameters (or the error) to ``out_dir``."""
    # a rank killed by a signal (a C++ abort) leaves its Python stacks in out_dir/fault.<rank>.txt
    fault = open(os.path.join(out_dir, f"fault.{rank}.txt"), "w")  # noqa: SIM115 - open until the process ends
    faulthandler.enable(fault, all_threads=True)
    torch.set_num_threads(1)
    # a rank stuck in a collective (its peer died) fails after 5 minutes instead of holding the test run
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(minutes=5))
    try:
        for name in names:
            mine = shards(name)[rank]
            torch.save(run_case(name, mine), os.path.join(out_dir, f"{name}.{rank}.pt"))
        # a rank without data: every rank raises (no hang)
        for kind in ("empty-rank", "loop-empty-rank") if errors else ():
            try:
                data = [] if rank == 1 else shards("cnn-default-subset")[0]
                model = models.build("tiny_cnn")
                if kind == "empty-rank":
                    torchpqt.quantize(model, data, progress=False)
                else:
                    prepared = torchpqt.prepare(model, models.example_input("tiny_cnn"))
                    with torch.no_grad():
                        for x in data:
                            prepared(x)
                    torchpqt.convert(prepared)
                message = "no error"
            except torchpqt.TorchPQTError as exc:
                message = f"{type(exc).__name__}: {exc}"
            with open(os.path.join(out_dir, f"{kind}.{rank}.txt"), "w") as f:
                f.write(message)
        torch.distributed.barrier()  # both ranks done with the group before either tears it down
    except Exception:
        with open(os.path.join(out_dir, f"crash.{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        torch.distributed.destroy_process_group()
