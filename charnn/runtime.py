"""Where and how computation runs: device choice, precision, threads, seeding and RNG snapshots.

Distributed (torchrun) setup lives here too, so every later module can ask who it is.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from charnn.config import BACKENDS
from charnn.errors import CharnnError, ConfigError


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


# --- distributed (torchrun) ------------------------------------------------------------------------------

DIST_TIMEOUT_S = 300.0  # every collective gives up after this; rank 0's evaluations must fit in it


@dataclass(frozen=True)
class DistInfo:
    """Who this process is in a torchrun job; rank 0 of world 1 when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def auto_backend(device_type: str | None) -> str:
    """NCCL for a model on CUDA (when the device is not given: when CUDA is present), else gloo."""
    cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    return "nccl" if cuda else "gloo"


def setup_distributed(backend: str = "auto", *, device_type: str | None = None,
                      timeout_s: float | None = None) -> DistInfo:
    """Join the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (idempotent).

    `auto` takes NCCL when the model trains on CUDA (`device_type`; when not given, when CUDA is present),
    else gloo: a CPU run on a GPU machine cannot all-reduce its CPU gradients over NCCL. Without torchrun's
    variables (or with WORLD_SIZE=1) nothing is initialised and the single-process path runs unchanged.
    """
    import torch.distributed as dist

    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "auto":
        backend = auto_backend(device_type)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("--backend nccl needs CUDA GPUs; use --backend gloo on CPUs")
        torch.cuda.set_device(local_rank)
    timeout = timedelta(seconds=timeout_s or float(os.environ.get("CHARNN_DIST_TIMEOUT", DIST_TIMEOUT_S)))
    kw = {"device_id": torch.device("cuda", local_rank)} if backend == "nccl" else {}
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout, **kw)
    return DistInfo(rank, world, local_rank)


def teardown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree(info: DistInfo, error: BaseException | None) -> None:
    """Collective: if any rank hit an error, every rank raises it (the lowest rank's), so none waits forever."""
    if not info.enabled:
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    gathered: list[Any] = [None] * info.world
    dist.all_gather_object(gathered, None if error is None else (type(error), str(error)))
    for rank, item in enumerate(gathered):
        if item is not None:
            if rank == info.rank and error is not None:
                raise error
            kind, message = item
            raise kind(f"rank {rank}: {message}") if issubclass(kind, CharnnError) else CharnnError(
                f"rank {rank} failed: {kind.__name__}: {message}")


def broadcast_object(info: DistInfo, value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_max(info: DistInfo, value: int) -> int:
    """The largest `value` over the ranks (the stop flag: one rank's signal stops all at the same step)."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()
