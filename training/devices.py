"""Where and in what precision a run trains: device, autocast dtype, memory layout, loader workers."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from fastai.torch_core import num_distrib, rank_distrib

# The dtype that each (device, precision) pair trains under (autocast); absent pairs train in fp32.
AUTOCAST_DTYPES = {("cpu", "bf16"): torch.bfloat16, ("cuda", "bf16"): torch.bfloat16, ("cuda", "fp16"): torch.float16}
MAX_LOADER_WORKERS = 8


class DeviceError(ValueError):
    """A device or precision that was asked for and cannot be had here."""


NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo can't be read)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def cpu_has_native_bf16() -> bool:
    """True on CPUs with native bf16 units (AVX512-BF16 or AMX), where bf16 training and serving pay off."""
    # The CPU's own flags: oneDNN also says yes on plain AVX-512, where it emulates bf16 slowly.
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def cpu_class() -> str:
    """The class every measured figure is reported with: AMX, AVX-512 bf16, AVX2-only, or older."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 bf16"
    return "AVX2-only" if "avx2" in flags else "no AVX2"


def pick_device(name: str) -> torch.device:
    """`auto` means CUDA when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but no CUDA device is available")
    if name == "cuda" and num_distrib() > 1:  # one device per process under `accelerate launch`
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank_distrib())))
    if name not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def pick_precision(name: str, device: torch.device) -> str:
    """Resolve `auto` to bf16 or fp16 on CUDA, bf16 on capable CPUs, else fp32."""
    if name not in ("auto", "fp32", "bf16"):
        raise DeviceError(f"unknown precision {name!r}; use auto, fp32 or bf16")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def loader_workers(device: torch.device) -> int:
    """Background decoding keeps a GPU busy; on CPU the model already uses every core, so decode in-process."""
    return min(MAX_LOADER_WORKERS, os.cpu_count() or 1) if device.type == "cuda" else 0


def training_memory_format(device: torch.device, precision: str) -> torch.memory_format:
    """NHWC for tensor cores and for oneDNN's bf16 kernels, where it measured faster; NCHW otherwise."""
    fast = device.type == "cuda" or precision == "bf16"
    return torch.channels_last if fast else torch.contiguous_format
