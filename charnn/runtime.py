"""Where and how computation runs: device choice (Apple's MPS only after a self-check), precision (bf16, fp16
with loss scaling, fp32), deterministic algorithms, seeding, RNG snapshots, and which device failures
are the user's to fix (`user_device_error`).

Not the multi-process side: torchrun's process group and its collectives are in `charnn.distributed`; not the
CPU thread count: `charnn.training.threads`.
"""

from __future__ import annotations

import functools
import os
import random
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from charnn.devicecheck import self_check
from charnn.errors import CharnnError, CharnnWarning, ConfigError, DeviceError, OutOfMemoryError, first_line
from charnn.ram import SMALLER

DEVICES = "auto, cpu, cuda, cuda:N or mps"
CUBLAS_WORKSPACE = ":4096:8"  # the deterministic cuBLAS setting nn.LSTM's documentation asks for


def pick_device(name: str = "auto", *, check: Callable[[torch.device], str | None] | None = None) -> torch.device:
    """`auto` takes CUDA when present, else Apple's MPS if it passes its self-check, else the CPU; `cuda` or
    `mps` without one is a user error. `check(device)` says why a device fails (None: it passes); its default
    is `mps_verdict`, run once per process."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return _mps_or_cpu(check) if mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device must be {DEVICES}, not {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps":
        if not mps_available():
            raise ConfigError("--device mps asked for, but this machine has no usable Apple GPU (MPS)")
        return _mps_or_cpu(check)
    elif device.type != "cpu":
        raise ConfigError(f"--device must be {DEVICES}, not {name!r}")
    return device


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _mps_or_cpu(check: Callable[[torch.device], str | None] | None) -> torch.device:
    if check is None:
        return _checked_mps()
    return _by_verdict(check(torch.device("mps")))


@functools.cache
def _checked_mps() -> torch.device:
    """The self-check and its warning once per process (`charnn train` picks its device twice)."""
    return _by_verdict(mps_verdict(torch.device("mps")))


def _by_verdict(reason: str | None) -> torch.device:
    if reason is None:
        return torch.device("mps")
    warnings.warn(
        f"the Apple GPU (MPS) failed charnn's start-up self-check ({reason}); using the CPU",
        CharnnWarning,
        stacklevel=4,
    )
    return torch.device("cpu")


def mps_verdict(device: torch.device) -> str | None:
    """Why `device` fails `charnn.devicecheck.self_check`, or None."""
    return self_check(device)


@functools.cache
def native_bf16_cpu() -> bool:
    """True when this process can train and sample in bf16 on the CPU at full speed: its oneDNN runs bf16 (it
    honours ONEDNN_MAX_CPU_ISA) on a CPU with bf16 dot-product instructions (AVX512-BF16 or AMX). oneDNN's bf16
    RNNs then train about 1.6-1.9x faster than fp32 at the same loss (docs/benchmarks.md). False wherever that
    is not known: AVX2 or older CPUs, AVX-512 without BF16 (oneDNN emulates bf16 there, slower than fp32),
    arm64, a PyTorch without oneDNN. Every CPU bf16 decision in charnn asks this one function."""
    return cpu_bf16_missing() is None


def cpu_bf16_missing() -> str | None:
    """Why this CPU has no native bf16 (as `native_bf16_cpu` decides), or None when it has; never raises."""
    try:
        if not torch.backends.mkldnn.is_available():
            return "this PyTorch has no oneDNN"
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "oneDNN reports none"
        flags = _cpu_flags()
    except Exception:  # noqa: BLE001 - a private op missing or failing in some build: not known, so none
        return "PyTorch cannot tell"
    if not {"avx512_bf16", "amx_bf16"} & flags:
        return "it lacks AVX512-BF16 and AMX, without which oneDNN's bf16 is slower than fp32"
    return None


def _cpu_flags() -> set[str]:
    """The CPU features PyTorch's cpuinfo reports as present (`torch.cpu.get_capabilities`, or the older
    per-feature checks)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        return {name for name, value in capabilities().items() if value is True}
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return {name for name, check in checks.items() if getattr(torch.cpu, check, lambda: False)()}


def cuda_fast_dtypes(device: torch.device) -> tuple[bool, bool]:
    """(native bf16, fp16 tensor cores) of a CUDA card. bf16 needs compute capability 8.0 (Ampere) or later,
    and emulated bf16 does not count (slower than fp32); fp16 tensor cores came with 7.0 (Volta)."""
    major, _ = torch.cuda.get_device_capability(device)
    bf16 = major >= 8 and torch.cuda.is_bf16_supported(including_emulation=False)
    return bf16, major >= 7


def wide_float(device: torch.device) -> torch.dtype:
    """The dtype of sums over many values (a log window's losses, a text's nats, beam scores) on `device`:
    float64, but float32 on Apple's MPS, which has no float64 (PyTorch refuses it there: pytorch#122602)."""
    return torch.float32 if device.type == "mps" else torch.float64


def autocast_dtype(device: torch.device, precision: str = "auto", *, training: bool = False) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, None for fp32. auto: bf16 on CUDA cards that have it,
    else fp16 (with loss scaling in training) on cards with fp16 tensor cores, else fp32; on the CPU bf16 only
    for training and only with native bf16 (evaluation stays exact); fp32 on MPS. A precision the device lacks
    is a user error (`DeviceError`, exit 6): bf16 on a GPU before Ampere or on a CPU without native bf16
    (`native_bf16_cpu`), whatever the command; `auto` never asks for one."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        bf16, fp16 = cuda_fast_dtypes(device)
        if precision == "auto":
            return torch.bfloat16 if bf16 else torch.float16 if fp16 else None
        if precision == "bf16" and not bf16:
            raise DeviceError(
                f"--precision bf16: {torch.cuda.get_device_name(device)} has no native bf16 "
                f"(Ampere or later); use --precision auto (fp16 with loss scaling) or fp32"
            )
    elif device.type == "cpu":
        if precision == "auto":
            return torch.bfloat16 if training and native_bf16_cpu() else None
        if precision == "fp16":
            raise ConfigError("--precision fp16 is for CUDA GPUs without bf16; on the CPU use fp32 or bf16")
        if precision == "bf16" and not native_bf16_cpu():
            raise DeviceError(
                f"--precision bf16: this CPU has no native bf16 ({cpu_bf16_missing()}); use --precision fp32"
            )
    elif precision == "auto":  # MPS: fp32, the precision its self-check compared
        return None
    elif precision == "fp16" and training:  # MPS: charnn scales the loss on CUDA only (`make_scaler`)
        raise ConfigError("--precision fp16 trains with loss scaling on CUDA only; on MPS use fp32 or bf16")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def uses_bf16(device: torch.device, precision: str = "auto", *, training: bool = False) -> bool:
    return autocast_dtype(device, precision, training=training) == torch.bfloat16


def autocast(device: torch.device, precision: str = "auto", *, training: bool = False):
    """Autocast to `autocast_dtype` (weights and optimizer stay fp32); a no-op for fp32."""
    dtype = autocast_dtype(device, precision, training=training)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_deterministic(on: bool) -> None:
    """--deterministic: PyTorch's deterministic algorithms, and on CUDA the cuBLAS workspace they need.

    CUBLAS_WORKSPACE_CONFIG is read when cuBLAS first starts on a device, so it goes into this process's
    environment here, before training runs a matmul (the CLI sets it earlier still, before anything touches
    the GPU; a value already set is kept). Turning it off undoes only what charnn turned on."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        if not torch.are_deterministic_algorithms_enabled():
            torch.use_deterministic_algorithms(True)
            _TURNED_ON.add("deterministic")
    elif "deterministic" in _TURNED_ON:
        torch.use_deterministic_algorithms(False)
        _TURNED_ON.discard("deterministic")


_TURNED_ON: set[str] = set()  # process-wide settings charnn changed, so it can undo just those


@contextmanager
def nondeterministic_allowed() -> Iterator[None]:
    """Lift `torch.use_deterministic_algorithms` inside the block (restored afterwards)."""
    if not torch.are_deterministic_algorithms_enabled():
        yield
        return
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)


# Pieces of the messages of device failures a user can fix by choosing another precision or device.
UNSUPPORTED = (
    "no kernel image is available",
    "not implemented for 'bfloat16'",
    "not implemented for 'half'",
    "cudnn_status_not_supported",
    "cudnn_status_arch_mismatch",
    "not currently implemented for the mps",
    "not supported on mps",
    "unsupported gpu architecture",
    "is not supported on this device",
    "could not create a primitive descriptor",  # oneDNN has no kernel for this precision on this CPU
)


def user_device_error(err: BaseException) -> CharnnError | None:
    """The CharnnError for a device failure the user can fix (out of memory on the GPU or in the CPU's RAM, a
    precision or kernel the device lacks), or None for anything else, which is a bug and keeps its traceback."""
    if isinstance(err, MemoryError):  # Python's or numpy's allocation failure: not a RuntimeError
        return OutOfMemoryError(f"out of memory ({first_line(err)}); {SMALLER}")
    if not isinstance(err, (RuntimeError, NotImplementedError)):
        return None
    text = first_line(err)
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in text.lower():
        return OutOfMemoryError(f"out of memory ({text}); {SMALLER}, or --device cpu")
    if any(piece in text.lower() for piece in CPU_OOM):  # torch's CPU allocator: RAM or `ulimit -v` exhausted
        tried = re.search(r"allocate (\d+) bytes", text)
        size = f" {int(tried.group(1)) / 1e9:.1f} GB" if tried else ""
        return OutOfMemoryError(f"out of memory: could not allocate{size} in RAM; {SMALLER}")
    if any(piece in str(err).lower() for piece in UNSUPPORTED):
        return DeviceError(f"this device cannot run it ({text}); try --precision fp32 or --device cpu")
    return None


CPU_OOM = ("can't allocate memory", "cannot allocate memory", "not enough memory")


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
