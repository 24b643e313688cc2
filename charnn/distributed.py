"""Data-parallel training under torchrun: who this process is, the process group, the few collectives the
training loop needs, and the DDP wrapper with the hidden-state rows each rank owns.

Every function here passes straight through in a single process (world 1), so callers need no `if`.
Not the training loop (`charnn.training.train`) and not device choice (`charnn.runtime`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from charnn.config import BACKENDS
from charnn.errors import CharnnError, ConfigError, DataError

DIST_TIMEOUT_S = 300.0  # every collective gives up after this; rank 0's evaluations must fit in it

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Who this process is in a torchrun job; rank 0 of world 1 when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    joined: bool = False  # in a process group (under torchrun, a single process too)

    @property
    def enabled(self) -> bool:
        return self.world > 1 or self.joined

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def auto_backend(device_type: str | None) -> str:
    """NCCL for a model on CUDA (when the device is not given: when CUDA is present), else gloo."""
    cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    return "nccl" if cuda else "gloo"


def setup_distributed(
    backend: str = "auto", *, device_type: str | None = None, timeout_s: float | None = None
) -> DistInfo:
    """Join the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (idempotent).

    `auto` takes NCCL when the model trains on CUDA (`device_type`; when not given, when CUDA is present),
    else gloo: a CPU run on a GPU machine cannot all-reduce its CPU gradients over NCCL. Without torchrun's
    variables (or with WORLD_SIZE=1 outside torchrun) nothing is initialised and the single-process path runs
    unchanged; `torchrun --nproc_per_node=1` joins a group of one, so DDP and its collectives run end to end.
    """
    import torch.distributed as dist

    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), joined=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets it for every process it starts
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
    return DistInfo(rank, world, local_rank, joined=True)


def teardown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- collectives -------------------------------------------------------------------------------------------


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
            raise (
                kind(f"rank {rank}: {message}")
                if issubclass(kind, CharnnError)
                else CharnnError(f"rank {rank} failed: {kind.__name__}: {message}")
            )


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


def all_sum(info: DistInfo, *tensors: torch.Tensor) -> None:
    """Sum each tensor over the ranks, in place."""
    if info.enabled:
        for tensor in tensors:
            torch.distributed.all_reduce(tensor)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


# --- the corpus every rank reads --------------------------------------------------------------------------


def local_rank_zero_first(info: DistInfo, load: Callable[[], T]) -> T:
    """`load()` on each node's local rank 0, then on the others: the first builds what the rest open (an
    on-disk corpus cache). A CharnnError on any rank is raised on every rank."""
    if not info.enabled:
        return load()
    result, error = None, None
    for turn in (0, 1):  # turn 0: local rank 0 loads; turn 1: the others
        if (info.local_rank == 0) == (turn == 0):
            try:
                result = load()
            except CharnnError as err:
                error = err
        barrier(info)
    agree(info, error)
    return result


def check_same_corpus(info: DistInfo, *, sha256: str, vocab_json: str, chars: int, path: str) -> None:
    """Every rank must train on the same ids: compare corpus sha256, vocabulary and length across ranks."""
    if not info.enabled:
        return
    mine = (sha256, hashlib.sha256(vocab_json.encode()).hexdigest(), chars, path)
    seen: list[Any] = [None] * info.world
    torch.distributed.all_gather_object(seen, mine)
    for rank, theirs in enumerate(seen):
        if theirs[:3] != seen[0][:3]:
            what = "sha256" if theirs[0] != seen[0][0] else "vocabulary or decoding"
            raise DataError(
                f"the corpus differs between processes: rank 0 read {seen[0][3]} ({what} "
                f"{seen[0][0][:12]}), rank {rank} read {theirs[3]} ({theirs[0][:12]}); every "
                f"process must train on the same file with the same options"
            )


# --- the model and its streams ----------------------------------------------------------------------------


def wrap_ddp(model: torch.nn.Module, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """The model as DDP: gradients are averaged over the ranks after backward, so every optimizer step is the
    same. The model itself in a single process."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def rank_rows(hidden, info: DistInfo):
    """This rank's rows (streams) of a full-batch hidden state (L, B, H)."""
    if not info.enabled or hidden is None:
        return hidden
    if isinstance(hidden, tuple):
        return tuple(rank_rows(h, info) for h in hidden)
    local = hidden.shape[1] // info.world
    return hidden[:, info.rank * local : (info.rank + 1) * local].contiguous()


def gather_rows(hidden, info: DistInfo):
    """The full-batch hidden state, rows in rank order (what a single process would hold): resume is exact
    with any number of processes. A collective under DDP; the result matters on rank 0 only."""
    if not info.enabled or hidden is None:
        return hidden
    if isinstance(hidden, tuple):
        return tuple(gather_rows(h, info) for h in hidden)
    parts = [torch.empty_like(hidden) for _ in range(info.world)]
    torch.distributed.all_gather(parts, hidden.detach().contiguous())
    return torch.cat(parts, dim=1)


__all__ = [
    "DIST_TIMEOUT_S",
    "DistInfo",
    "agree",
    "all_max",
    "all_sum",
    "auto_backend",
    "barrier",
    "broadcast_object",
    "check_same_corpus",
    "gather_rows",
    "local_rank_zero_first",
    "rank_rows",
    "setup_distributed",
    "teardown_distributed",
    "wrap_ddp",
]
