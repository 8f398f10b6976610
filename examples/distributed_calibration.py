"""Calibrate on several processes: each torchrun rank quantizes EfficientNet-Lite0 on its own shard of the
calibration photos, and every rank gets the model one process computes on all of them.

    torchrun --nproc-per-node 2 examples/distributed_calibration.py [--quick]

Each rank passes only its shard to torchpqt.quantize(); the ranks exchange the statistics they collected
(gloo on CPU) and merge them in rank order, so the result is the single-process model on the shards'
concatenation in rank order, bit for bit. Rank 0 checks that against one process quantizing all photos
(``distributed=False``) and prints the times.
"""

import os
import time

import _common as common  # examples/_common.py: shipped photos
import torch
import torch.distributed as dist
from efficientnet_lite import efficientnet_lite0

import torchpqt

args = common.example_args(__doc__, "distributed_calibration")
common.quiet_logging()
if "RANK" not in os.environ:
    raise SystemExit("run me with torchrun, e.g. torchrun --nproc-per-node 2 examples/distributed_calibration.py")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # one core per rank
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

photos = common.image_crops(16 if args.quick else 64, "calibration")
per_rank = -(-len(photos) // world)
shard = photos[rank * per_rank:(rank + 1) * per_rank]  # contiguous shards: their concatenation is `photos`
config = {"preset": "performance", "stat_subset_size": len(photos) - 2}  # counts over all ranks' photos
model = efficientnet_lite0(pretrained=True)

t0 = time.perf_counter()
qmodel = torchpqt.quantize(model, shard, config, progress=False)  # sharded: a process group is initialized
sharded_s = time.perf_counter() - t0


def ranges(q):
    return {f"{n}.{a}": getattr(m, a) for n, m in q.named_modules() if isinstance(m, torchpqt.FakeQuantize)
            for a in ("input_low", "input_high", "output_low", "output_high")}


if rank == 0:
    t0 = time.perf_counter()
    alone = torchpqt.quantize(model, photos, config, progress=False, distributed=False)
    alone_s = time.perf_counter() - t0
    mine, ref = ranges(qmodel), ranges(alone)
    same = mine.keys() == ref.keys() and all(torch.equal(mine[k], ref[k]) for k in ref)
    print(f"{world} ranks, {len(shard)} of {len(photos)} photos here: {len(ref) // 4} FakeQuantize, "
          f"identical to one process on all photos: {same}")
    print(f"quantize(): {sharded_s:.1f} s on {world} ranks, {alone_s:.1f} s in one process")
dist.barrier()  # every rank done with the group before any tears it down
dist.destroy_process_group()
