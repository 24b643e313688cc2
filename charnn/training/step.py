"""One optimisation step of the training loop: the optimizer (AdamW, decay on matrices only), its learning rate,
forward and backward over one batch of truncated BPTT, loss scaling for fp16, gradient clipping, the guard that
keeps steps with a non-finite loss or gradient out of the weights, and the device-side sums behind each log line.

Not the loop itself (`charnn.training.train`) nor its schedule (`charnn.training.schedule`).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import torch

from charnn.config import TrainConfig
from charnn.distributed import DistInfo, all_sum
from charnn.errors import CheckpointError, NonFiniteLossError, OutOfMemoryError
from charnn.model import CharRNN, Hidden, detach_hidden, lm_loss
from charnn.runtime import autocast, autocast_dtype, user_device_error, wide_float


def make_optimizer(model: CharRNN, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Weight decay on matrices only; biases and the layer norm's gain and bias are left alone. parameters()
    # yields a tied embedding/output matrix once, so AdamW never sees it twice; it is a matrix and is decayed,
    # as the untied embedding and head both are (and as nanoGPT decays its tied wte/lm_head).
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # One kernel for the whole update on CUDA and on the CPU (where it takes about a sixth of foreach's time:
    # 0.3 against 2 ms a step for the plan's 2x256 model in fp32); PyTorch's default elsewhere (on MPS the
    # for-loop one: PyTorch has no foreach kernels there).
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=fused)


def make_scaler(cfg: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler where training runs in fp16 (CUDA cards without bf16): fp16 gradients underflow to zero
    unless the loss is scaled up before backward. None for bf16 and fp32, which need none. A precision the device
    lacks is refused here, before the run directory is made or claimed."""
    dtype = autocast_dtype(device, cfg.precision, training=True)
    if device.type != "cuda" or dtype != torch.float16:
        return None
    return torch.amp.GradScaler("cuda")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a saved optimizer state, keeping this device's implementation flags.

    load_state_dict takes every key of the saved param groups, `fused` and `foreach` included: a run saved on
    the CPU (unfused) and resumed on CUDA would step unfused, where the loop's found_inf skip needs the fused
    kernel, and its step counters would stay on the CPU. The flags of the optimizer built for this device win,
    and load_state_dict then places the step counters where that implementation wants them.
    """
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(
            f"the saved optimizer state has {len(saved['param_groups'])} parameter groups, "
            f"this version of charnn makes {len(optimizer.param_groups)}; cannot resume"
        )
    saved = {
        **saved,
        "param_groups": [
            {**group, **{k: mine[k] for k in ("fused", "foreach", "capturable") if k in mine}}
            for group, mine in zip(saved["param_groups"], optimizer.param_groups, strict=True)
        ],
    }
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"the saved optimizer state does not fit this model ({err})") from None
    for group in optimizer.param_groups:  # load_state_dict checks the counts; a moment's shape must be its weight's
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if (
                    not torch.is_tensor(value)
                    or not value.is_floating_point()
                    or (value.dim() and value.shape != p.shape)
                ):
                    raise CheckpointError(
                        f"the saved optimizer state does not fit this model ({key} of shape "
                        f"{tuple(getattr(value, 'shape', ()))} for a weight of {tuple(p.shape)})"
                    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def host_sync_every(cfg: TrainConfig, device: torch.device) -> int:
    """How often the loop reads device values on the host: every log line on CUDA, where each read would make
    the host wait for the GPU; every step elsewhere (free on the CPU; on MPS the guard needs it, see
    `_guarded_update`)."""
    return cfg.log_every if device.type == "cuda" else 1


@dataclass
class StepStats:
    """What the steps add up to between two reads on the host, kept on the device: the log window's sums,
    the last gradient norm, and the run of non-finite steps."""

    loss: torch.Tensor  # sum of the window's finite losses, in float64 (float32 on MPS: `wide_float`)
    finite: torch.Tensor  # how many of the window's steps were finite
    clipped: torch.Tensor  # how many had their gradient clipped
    grad_norm: torch.Tensor  # the last step's, before clipping
    bad_run: torch.Tensor  # non-finite steps in a row
    bad_max: torch.Tensor  # the longest bad_run since the last host check (CUDA)
    steps: int = 0  # steps in the window
    started: float = 0.0  # perf_counter() at the window's start

    @classmethod
    def on(cls, device: torch.device) -> StepStats:
        """All zero, the window starting now."""
        zero = functools.partial(torch.zeros, (), device=device)
        return cls(
            loss=zero(dtype=wide_float(device)),
            finite=zero(),
            clipped=zero(),
            grad_norm=zero(),
            bad_run=zero(),
            bad_max=zero(),
            steps=0,
            started=time.perf_counter(),
        )

    def read_window(self, info: DistInfo, chars_per_step: int) -> tuple[float, float, float, float]:
        """(mean train loss, last gradient norm, clipped share, chars/s) of the window; the loss is the mean
        over every rank's finite steps. Call `new_window` once the line is written."""
        rate = self.steps * chars_per_step / max(time.perf_counter() - self.started, 1e-9)
        all_sum(info, self.loss, self.finite)
        mean = float(self.loss.item()) / max(float(self.finite.item()), 1.0)
        return mean, float(self.grad_norm.item()), float(self.clipped.item()) / self.steps, rate

    def new_window(self) -> None:
        self.loss.zero_()
        self.finite.zero_()
        self.clipped.zero_()
        self.steps, self.started = 0, time.perf_counter()


def optimisation_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    hidden: Hidden | None,
    stats: StepStats,
    *,
    cfg: TrainConfig,
    device: torch.device,
    step: int,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[bool, Hidden | None]:
    """Forward and backward over one batch (x, y: (B, T)), clip, update. Returns whether the step was taken
    (False: skipped as non-finite, on the CPU) and the hidden state to carry into the next batch. A device
    failure the user can fix (out of memory, a precision the GPU lacks) is raised as a CharnnError."""
    try:
        return _step(net, optimizer, batch, hidden, stats, cfg=cfg, device=device, step=step, scaler=scaler)
    except (RuntimeError, NotImplementedError) as err:
        if isinstance(err, torch.OutOfMemoryError):
            raise OutOfMemoryError(
                f"out of memory on {device} with batch size {cfg.batch_size} and sequence length "
                f"{cfg.seq_len}; lower --batch-size or --seq-len (or --hidden)"
            ) from None
        user = user_device_error(err)
        if user is None:
            raise
        raise user from None


def _step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    hidden: Hidden | None,
    stats: StepStats,
    *,
    cfg: TrainConfig,
    device: torch.device,
    step: int,
    scaler: torch.amp.GradScaler | None,
) -> tuple[bool, Hidden | None]:
    x, y = batch
    with autocast(device, cfg.precision, training=True):
        logits, hidden = net(x, hidden)  # (B, T, V)
        loss = lm_loss(logits, y)
    # Truncated BPTT: the state's values carry into the next batch, but its graph must not,
    # or backward would reach through every earlier batch.
    hidden = detach_hidden(hidden)
    optimizer.zero_grad(set_to_none=True)
    scaled_backward(loss, optimizer, scaler)
    # Clip the global norm: one exploding window must not wreck the weights (Pascanu et al. 2013).
    stats.grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    finite = torch.isfinite(loss.detach()) & torch.isfinite(stats.grad_norm)
    taken, hidden = _guarded_update(optimizer, finite, hidden, stats, cfg=cfg, device=device, step=step, scaler=scaler)
    if taken:
        stats.loss += torch.where(finite, loss.detach().to(stats.loss.dtype), 0.0)
        stats.finite += finite.float()
        if cfg.grad_clip > 0:
            stats.clipped += (stats.grad_norm > cfg.grad_clip).float()
        stats.steps += 1
    return taken, hidden


def scaled_backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """loss.backward(); with a scaler, backward of the scaled loss, then the gradients divided back in place
    (`unscale_`), so clipping and the guard see their true size. An overflow leaves inf or NaN gradients: the
    guard's gradient norm is then not finite and the step is skipped, as any non-finite step is."""
    if scaler is None:
        loss.backward()
        return
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)


def _guarded_update(
    optimizer: torch.optim.Optimizer,
    finite: torch.Tensor,
    hidden: Hidden | None,
    stats: StepStats,
    *,
    cfg: TrainConfig,
    device: torch.device,
    step: int,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[bool, Hidden | None]:
    """Update the weights unless this step's loss or gradient norm is not finite; after `max_bad_steps` such
    steps in a row, raise NonFiniteLossError (the checkpoints on disk are left as they are).

    The two paths keep a bad step out of the weights at different costs. On the CPU reading `finite` is free,
    so every step is checked on the host: a bad step drops its gradients, restarts the streams and is not
    taken (the caller reports it). On CUDA a read would make every step wait for the GPU, so nothing is read:
    the fused AdamW skips its own update when `found_inf` is set, a bad step's streams are zeroed on the
    device, the step counts as taken, and the longest run of bad steps is read only every log line. An
    optimizer without that skip (MPS's AdamW, not fused) is checked on the host, as on the CPU.
    """
    if device.type == "cpu" or not skips_on_device(optimizer):
        if not bool(finite):
            optimizer.zero_grad(set_to_none=True)
            stats.bad_run = stats.bad_run + 1
            if int(stats.bad_run) >= cfg.max_bad_steps:
                raise NonFiniteLossError(
                    f"loss was not finite for {int(stats.bad_run)} steps in a row at step {step}; stopped "
                    f"without saving (last good checkpoint kept); try a lower --lr"
                )
            return False, None
        optimizer.step()
        stats.bad_run.zero_()
        return True, hidden
    optimizer.found_inf = (~finite).float()
    optimizer.grad_scale = None
    optimizer.step()
    if scaler is not None:
        scaler.update()
    stats.bad_run = torch.where(finite, torch.zeros_like(stats.bad_run), stats.bad_run + 1)
    stats.bad_max = torch.maximum(stats.bad_max, stats.bad_run)
    steps_done = step + 1  # counting this one
    if steps_done % host_sync_every(cfg, device) == 0:
        if int(stats.bad_max) >= cfg.max_bad_steps:
            raise NonFiniteLossError(
                f"loss was not finite for {int(stats.bad_max)} steps in a row before step {steps_done}; stopped "
                f"without saving (last good checkpoint kept); try a lower --lr"
            )
        stats.bad_max.zero_()
    return True, _zero_if(hidden, ~finite)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` skips its own update when `found_inf` is set: PyTorch's fused kernels do; the
    foreach and for-loop ones refuse a `found_inf`."""
    return all(group.get("fused") for group in optimizer.param_groups)


def _zero_if(hidden: Hidden | None, flag: torch.Tensor) -> Hidden | None:
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        return tuple(torch.where(flag, torch.zeros_like(h), h) for h in hidden)
    return torch.where(flag, torch.zeros_like(hidden), hidden)
