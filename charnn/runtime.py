"""Where and how computation runs: device choice, precision, threads, seeding and RNG snapshots.

Not the multi-process side: torchrun's process group and its collectives are in `charnn.distributed`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from charnn.errors import ConfigError
from charnn.planning import Hardware


def pick_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA when present, else the CPU; `cuda` without CUDA is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}")
    return device


@functools.cache
def native_bf16_cpu() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX): oneDNN's bf16 RNNs then
    train about 1.6-1.9x faster than fp32 at the same loss (measured in docs/benchmarks.md)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags)) and torch.backends.mkldnn.is_available()


def uses_bf16(device: torch.device, precision: str = "auto", *, training: bool = False) -> bool:
    """auto: bf16 on CUDA; on the CPU only for training and only with native bf16 (evaluation stays fp32
    there, so scores are exact and the same from `train` and `eval`)."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (training and device.type == "cpu" and native_bf16_cpu())


def autocast(device: torch.device, precision: str = "auto", *, training: bool = False):
    """bf16 autocast where `uses_bf16` says so (weights and optimizer stay fp32); a no-op otherwise."""
    if not uses_bf16(device, precision, training=training):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextmanager
def ieee_rnn(device: torch.device) -> Iterator[None]:
    """cuDNN RNNs in full fp32 inside the block, on CUDA: its default is TF32 (products of 10-bit mantissas),
    while the sampler's fast path multiplies in full fp32, and both paths must draw the same text. Restored
    afterwards; a no-op on the CPU and where this PyTorch has no per-operator TF32 setting."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if device.type != "cuda" or not hasattr(rnn, "fp32_precision"):
        yield
        return
    before = rnn.fp32_precision
    # Process-wide while it lasts (one sampling step): reading the legacy cudnn.allow_tf32 in that window raises.
    rnn.fp32_precision = "ieee"
    try:
        yield
    finally:
        rnn.fp32_precision = before


def hardware(device: torch.device) -> Hardware:
    """The facts about `device` the training plan reads."""
    return Hardware(device.type, cores=torch.get_num_threads(),
                    native_bf16=device.type == "cuda" or (device.type == "cpu" and native_bf16_cpu()))


def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and primitives only, so `torch.load(weights_only=True)` can read them back."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)
