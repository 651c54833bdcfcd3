"""Data-parallel training under `accelerate launch`, on CUDA (NCCL) or on CPU (gloo), with fastai's own trainer."""
from __future__ import annotations

import contextlib
import os

import torch
from fastai.callback.core import Callback
from fastai.distributed import DistributedDL, DistributedTrainer, num_distrib
from fastai.torch_core import noop


class GlooSafeDistributedDL(DistributedDL):
    """fastai broadcasts shuffled indices through CUDA tensors (for NCCL); gloo on CPU needs CPU tensors."""

    def _broadcast(self, t, rank):
        if torch.distributed.get_backend() == "nccl":
            return super()._broadcast(t, rank)
        tensor = torch.tensor(t, dtype=torch.long)
        torch.distributed.broadcast(tensor, rank)
        return tensor.tolist()


class AcceleratedTrainer(DistributedTrainer):
    """fastai's DistributedTrainer, wrapping DataLoaders in the gloo-safe loader."""

    def _wrap_dl(self, dl):
        if isinstance(dl, DistributedDL):
            return dl
        return GlooSafeDistributedDL(dl, device=next(self.learn.model.parameters()).device)


class TrainingBatches(Callback):
    """Counts the training batches this process ran."""

    def before_fit(self):
        self.count = 0

    def after_batch(self):
        if self.training:
            self.count += 1


def batches_per_rank(count: int) -> list[int]:
    """Every rank's `count`, in rank order (a collective: every rank must call it)."""
    counts = [0] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(counts, count)
    return counts


@contextlib.contextmanager
def data_parallel(learn, device: torch.device, echo=noop):
    """Inside `accelerate launch` with several processes, fit data-parallel, then `echo` each rank's share of the
    batches (a rank that sat out would show 0); otherwise do nothing."""
    if num_distrib() <= 1:
        yield learn
        return
    # SyncBatchNorm is CUDA-only; on CPU each process keeps its own batch statistics.
    trainer = AcceleratedTrainer(sync_bn=device.type == "cuda", cpu=device.type == "cpu")
    counter = TrainingBatches()
    learn.add_cbs([trainer, counter])
    try:
        yield learn
    finally:
        learn.remove_cbs([trainer, counter])
    counts = batches_per_rank(counter.count)  # only after a fit that ended well: a failed rank would never answer
    echo(f"  {len(counts)} processes trained {' + '.join(map(str, counts))} batches")


@contextlib.contextmanager
def this_process_only():
    """Let rank 0 evaluate and export alone after training; fastai would otherwise all-gather with finished ranks."""
    saved = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"  # what fastai's num_distrib() reads
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("WORLD_SIZE", None)
        else:
            os.environ["WORLD_SIZE"] = saved


def rank0_choice(value):
    """Rank 0's `value` on every process (each measures its own clock; all must take the same steps)."""
    if num_distrib() <= 1 or not torch.distributed.is_initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
