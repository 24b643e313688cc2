"""Training: truncated BPTT over parallel streams with AdamW, warmup + cosine decay, gradient clipping,
periodic whole-split validation, samples, checkpoints and exact resume.

The library never prints: it reports through `on_progress(Progress)` and stops when `should_stop()` returns
a signal number. Presentation (progress bar, colours) belongs to the CLI.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charnn import __version__
from charnn.checkpoint import (
    STATE_SUFFIX,
    CharnnWarning,
    LoadedModel,
    atomic_write,
    list_checkpoints,
    load_model,
    load_state,
    remove_stale_temps,
    save_checkpoint,
)
from charnn.config import (
    DataConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    final_lr,
    from_dict,
    overlay_train,
    to_dict,
)
from charnn.data import Corpus, StreamBatcher, encode_file
from charnn.errors import (
    CharnnError,
    CheckpointError,
    CheckpointWriteError,
    ConfigError,
    DataError,
    Interrupted,
    NonFiniteLossError,
    OutOfMemoryError,
    ResumeMismatchError,
)
from charnn.evaluate import evaluate_ids
from charnn.model import CharRNN, detach_hidden, lm_loss, num_parameters
from charnn.runtime import (
    DistInfo,
    agree,
    all_max,
    autocast,
    barrier,
    broadcast_object,
    pick_device,
    rng_state,
    seed_everything,
    set_rng_state,
    set_threads,
    setup_distributed,
)
from charnn.sample import sample_text

DEMO_SAMPLE_STEPS = (100, 300, 700)  # then every 1000: the char-rnn demo's "iteration 100, 300, 700, 2000"


@dataclass(frozen=True)
class Progress:
    """One event of a training run, for the caller to display or record."""

    kind: str  # start | log | eval | sample | checkpoint | warning | stop | end
    step: int
    total_steps: int | None
    elapsed: float
    time_budget: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    chars_per_s: float | None = None
    text: str | None = None  # the sample, a path, or a message


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    steps: int
    elapsed: float
    final_val_loss: float | None
    best_val_loss: float | None
    latest: Path | None
    stopped_early: bool = False  # --patience ended the run before its stopping rule


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_iters` steps, then cosine decay to min_lr as `progress` goes 0 -> 1."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    low = final_lr(cfg)
    progress = min(max(progress, 0.0), 1.0)
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * progress))


def is_sample_step(cfg: TrainConfig, step: int) -> bool:
    if cfg.sample_every is not None:
        return step % cfg.sample_every == 0
    return step in DEMO_SAMPLE_STEPS or (step >= 1000 and step % 1000 == 0)


def default_run_dir(corpus: str | os.PathLike, root: str | os.PathLike = "checkpoints") -> Path:
    stem = Path(corpus).stem or "run"
    base = Path(root) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def make_optimizer(model: CharRNN, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Weight decay on matrices only; biases and the layer norm's gain and bias are left alone. parameters()
    # yields a tied embedding/output matrix once, so AdamW never sees it twice; it is a matrix and is decayed,
    # as the untied embedding and head both are (and as nanoGPT decays its tied wte/lm_head).
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"  # one kernel for the whole update; foreach on the CPU
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=fused)


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a saved optimizer state, keeping this device's implementation flags.

    load_state_dict takes every key of the saved param groups, `fused` and `foreach` included: a run saved on
    the CPU (unfused) and resumed on CUDA would step unfused, where the loop's found_inf skip needs the fused
    kernel, and its step counters would stay on the CPU. The flags of the optimizer built for this device win,
    and load_state_dict then places the step counters where that implementation wants them.
    """
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(f"the saved optimizer state has {len(saved['param_groups'])} parameter groups, "
                              f"this version of charnn makes {len(optimizer.param_groups)}; cannot resume")
    saved = {**saved, "param_groups": [
        {**group, **{k: mine[k] for k in ("fused", "foreach", "capturable") if k in mine}}
        for group, mine in zip(saved["param_groups"], optimizer.param_groups, strict=True)]}
    optimizer.load_state_dict(saved)


def resume_configs(run_dir: str | os.PathLike, *, model_overrides: dict[str, Any],
                   train_overrides: dict[str, Any], data_overrides: dict[str, Any]
                   ) -> tuple[ModelConfig, TrainConfig, DataConfig, str]:
    """The configs a resumed run continues with: the run's own, with training options the user changed.

    A changed model or data option is refused (it would silently train something else).
    """
    run_dir = Path(run_dir)
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{run_dir}: not a charnn run directory (config.json missing or unreadable)") from None
    model_cfg = from_dict(ModelConfig, saved.get("model", {}))
    data_cfg = from_dict(DataConfig, saved.get("data", {}))
    for cfg, overrides, what in ((model_cfg, model_overrides, "model"), (data_cfg, data_overrides, "data")):
        for key, value in overrides.items():
            if value is not None and getattr(cfg, key) != value:
                raise ResumeMismatchError(
                    f"--resume: this run was trained with {key}={getattr(cfg, key)!r}, not {value!r}; "
                    f"{what} options cannot change on resume (start a new run instead)")
    train_dict = overlay_train(saved.get("train", {}), train_overrides)
    return model_cfg, from_dict(TrainConfig, train_dict), data_cfg, saved.get("corpus", {}).get("path", "")


def _latest_resumable(run_dir: Path) -> tuple[LoadedModel, dict[str, Any]]:
    """The newest checkpoint whose model and state both verify; older ones are tried with a warning."""
    import warnings

    errors = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            loaded = load_model(path)
            sha = loaded.meta.get("state_sha256")
            if sha is None:
                raise CheckpointError(f"{path}: has no training state to resume from")
            state = load_state(path.with_name(path.stem + STATE_SUFFIX), sha)
        except CheckpointError as err:
            errors.append(str(err))
            warnings.warn(f"{err}; falling back to an earlier checkpoint", CharnnWarning, stacklevel=3)
            continue
        return loaded, state
    reason = f" ({errors[-1]})" if errors else ""
    raise CheckpointError(f"{run_dir}: no checkpoint to resume from{reason}")


def train(corpus: str | os.PathLike | Corpus, *, model_cfg: ModelConfig | None = None,
          train_cfg: TrainConfig | None = None, data_cfg: DataConfig | None = None,
          out_dir: str | os.PathLike | None = None, resume: bool = False,
          on_progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], int | None] | None = None,
          cache_dir: str | os.PathLike | None = None, on_encode: Callable[[Any], None] | None = None
          ) -> TrainResult:
    """Train a model on `corpus` and write a run directory; see the module docstring for the protocol.

    With `cache_dir` the corpus is encoded once into a memory-mapped cache there (`charnn.corpus_cache`;
    `on_encode` gets its progress). Under torchrun every rank trains its share of the streams (DDP).
    """
    model_cfg = model_cfg or ModelConfig()
    cfg = train_cfg or TrainConfig()
    data_cfg = data_cfg or (corpus.data if isinstance(corpus, Corpus) else DataConfig())
    report = on_progress or (lambda p: None)
    should_stop = should_stop or (lambda: None)

    device = pick_device(cfg.device)
    dist_info = setup_distributed(device_type=device.type)
    if not dist_info.is_main:
        report = lambda p: None  # noqa: E731  (rank 0 alone logs)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    set_threads(cfg.threads)
    data = corpus if isinstance(corpus, Corpus) else _load_corpus(corpus, data_cfg, cache_dir, on_encode, dist_info)
    _check_same_corpus(data, dist_info)
    train_ids, val_ids, _ = data.split()
    vocab = data.vocab
    if cfg.patience is not None and data.data.val_frac == 0:
        raise ConfigError("--patience needs a validation split to watch (--val-frac > 0)")
    if data.data.val_frac > 0 and len(val_ids) < 2:
        raise DataError(f"{data.path}: validation split has {len(val_ids)} characters; need at least 2 "
                        f"(raise --val-frac or use more text)")
    batcher = StreamBatcher(train_ids, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed,
                            device=device, rank=dist_info.rank, world=dist_info.world)
    total_steps = _total_steps(cfg, batcher)

    run_dir = broadcast_object(dist_info, Path(out_dir) if out_dir else default_run_dir(data.path))
    seed_everything(cfg.seed)
    model = CharRNN(model_cfg, len(vocab)).to(device)
    optimizer = make_optimizer(model, cfg, device)
    step, elapsed_before, best_val, hidden = 0, 0.0, math.inf, None
    stale = 0  # evaluations since the last new best validation loss (early stopping)
    if resume:
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir}: no such run directory to resume")
        if dist_info.is_main:  # another rank's cleanup could delete rank 0's file mid-write
            remove_stale_temps(run_dir)
        loaded, state = _latest_resumable(run_dir)
        _check_same_run(loaded, model_cfg, vocab, data.sha256)
        model.load_state_dict(loaded.model.state_dict())
        load_optimizer_state(optimizer, state["optimizer"])
        _apply_lr(optimizer, cfg.lr)  # the new peak lr may differ; the schedule sets each step's value
        step, elapsed_before = int(state["step"]), float(state["elapsed"])
        best_val = float(state.get("best_val", math.inf))
        stale = int(state.get("evals_since_best", 0))
        hidden = state.get("hidden")
        if hidden is not None:
            # fp32 on disk and here: a resume may change --precision or the device (bf16 -> fp32 is exact)
            hidden = (tuple(h.to(device, torch.float32) for h in hidden) if isinstance(hidden, (list, tuple))
                      else hidden.to(device, torch.float32))
            hidden = _rank_rows(hidden, dist_info)  # the saved state holds every stream; take this rank's
        set_rng_state(state["rng"])
    else:
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"--out {run_dir} is a file, not a run directory")
        if run_dir.exists() and list_checkpoints(run_dir):
            raise ConfigError(f"{run_dir} already holds a run; pass --resume {run_dir} or choose another --out")
        if dist_info.is_main:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise CheckpointWriteError(f"cannot create the run directory {run_dir}: {err.strerror}") from None
            remove_stale_temps(run_dir)
    if dist_info.is_main:
        _write_run_files(run_dir, data, model_cfg, cfg)
    # Under DDP gradients are averaged over the ranks after backward; the optimizer step is the same on all.
    net = _wrap_ddp(model, device, dist_info)

    try:
        metrics = open(run_dir / "metrics.jsonl" if dist_info.is_main else os.devnull, "a", encoding="utf-8")
        samples = open(run_dir / "samples.jsonl" if dist_info.is_main else os.devnull, "a", encoding="utf-8")
    except OSError as err:
        raise CheckpointWriteError(f"cannot write logs in {run_dir}: {err.strerror}") from None

    def log(record: dict[str, Any]) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    chars_per_step = cfg.batch_size * cfg.seq_len
    t_start = time.perf_counter() - elapsed_before
    elapsed = lambda: time.perf_counter() - t_start  # noqa: E731
    state_cb = lambda: _training_state(step, elapsed(), best_val, optimizer,  # noqa: E731
                                       _gather_hidden(hidden, dist_info), cfg, stale)
    last_val: float | None = None
    latest: Path | None = None
    stopped_early = False
    saved_step: int | None = None

    def checkpoint(val: float | None) -> Path | None:
        nonlocal saved_step
        state = state_cb()  # a collective under DDP: every rank sends its streams' hidden state
        path = None
        if dist_info.is_main:
            path = save_checkpoint(run_dir, model, vocab, data.data, step=step, val_loss=val,
                                   corpus_sha256=data.sha256, state=state, keep_last=cfg.keep_last,
                                   extra={"corpus_path": str(Path(data.path).resolve()),
                                          "corpus_cache": str(Path(cache_dir).resolve()) if cache_dir else "",
                                          "train_config": json.dumps(to_dict(cfg))})
            report(Progress("checkpoint", step, total_steps, elapsed(), cfg.time_budget, text=str(path)))
        barrier(dist_info)  # no rank runs ahead of a checkpoint being written
        saved_step = step
        return path

    def evaluate_and_save() -> None:
        nonlocal best_val, last_val, latest, stale
        val = None
        if len(val_ids) >= 2 and dist_info.is_main:
            res = evaluate_ids(model, val_ids, segment=cfg.eval_segment, precision=cfg.precision)
            val = res.loss
            if math.isfinite(val) and val < best_val:
                best_val, stale = val, 0
            else:
                stale += 1
            log({"kind": "eval", "step": step, "elapsed": round(elapsed(), 3), "val_loss": val,
                 "val_bpc": res.bpc, "val_chars": res.chars})
            report(Progress("eval", step, total_steps, elapsed(), cfg.time_budget, val_loss=val))
        last_val = val
        latest = checkpoint(val)

    def draw_sample() -> None:
        sample_cfg = SampleConfig(length=cfg.sample_length, temperature=cfg.sample_temperature, seed=cfg.seed)
        text = sample_text(model, vocab, sample_cfg)[0]
        model.train()
        shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        samples.write(json.dumps({"step": step, "elapsed": round(elapsed(), 3), "val_loss": last_val,
                                  "temperature": cfg.sample_temperature, "text": shown}) + "\n")
        samples.flush()
        report(Progress("sample", step, total_steps, elapsed(), cfg.time_budget, text=shown))

    report(Progress("start", step, total_steps, elapsed(), cfg.time_budget,
                    text=f"{run_dir} | {num_parameters(model_cfg, len(vocab)):,} parameters | "
                         f"vocabulary {len(vocab)} | train {len(train_ids):,} chars | device {device}"))
    model.train()
    params = [p for p in model.parameters()]
    sync_every = 1 if device.type == "cpu" else cfg.log_every
    bad_run = torch.zeros((), device=device)
    bad_max = torch.zeros((), device=device)  # longest run of non-finite steps since the last host check
    window_loss = torch.zeros((), device=device, dtype=torch.float64)
    window_finite = torch.zeros((), device=device)
    window_clip = torch.zeros((), device=device)
    window_steps, window_t = 0, time.perf_counter()
    grad_norm = torch.zeros((), device=device)
    try:
        while True:
            progress = elapsed() / cfg.time_budget if cfg.time_budget else step / max(total_steps or 1, 1)
            if (total_steps is not None and step >= total_steps) or (cfg.time_budget and progress >= 1.0):
                break
            signum = should_stop()
            if dist_info.enabled and step % sync_every == 0:
                signum = all_max(dist_info, signum or 0) or None  # one rank's signal stops every rank here
            if signum:
                latest = checkpoint(None)
                raise Interrupted(f"interrupted at step {step}; saved {latest}; continue with "
                                  f"--resume {run_dir}", exit_code=128 + signum)
            lr = learning_rate(cfg, step, progress)
            _apply_lr(optimizer, lr)
            epoch, k = batcher.position(step)
            if k == 0:
                hidden = None  # a new epoch starts the streams afresh (at a new offset)
            x, y = batcher.batch(step)
            try:
                with autocast(device, cfg.precision, training=True):
                    logits, hidden = net(x, hidden)
                    loss = lm_loss(logits, y)
                # Truncated BPTT: the state's values carry into the next batch, but its graph must not,
                # or backward would reach through every earlier batch.
                hidden = detach_hidden(hidden)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            except torch.OutOfMemoryError:
                raise OutOfMemoryError(
                    f"out of memory on {device} with batch size {cfg.batch_size} and sequence length "
                    f"{cfg.seq_len}; lower --batch-size or --seq-len (or --hidden)") from None
            # Clip the global norm: one exploding window must not wreck the weights (Pascanu et al. 2013).
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
            if device.type == "cpu":
                if not bool(finite):
                    optimizer.zero_grad(set_to_none=True)
                    hidden, bad_run = None, bad_run + 1
                    if int(bad_run) >= cfg.max_bad_steps:
                        raise NonFiniteLossError(
                            f"loss was not finite for {int(bad_run)} steps in a row at step {step}; stopped "
                            f"without saving (last good checkpoint kept); try a lower --lr")
                    report(Progress("warning", step, total_steps, elapsed(), text="non-finite loss; step skipped"))
                    step += 1
                    continue
                optimizer.step()
                bad_run.zero_()
            else:  # no host sync: the fused optimizer skips the update itself when found_inf is set
                optimizer.found_inf = (~finite).float()
                optimizer.grad_scale = None
                optimizer.step()
                bad_run = torch.where(finite, torch.zeros_like(bad_run), bad_run + 1)
                bad_max = torch.maximum(bad_max, bad_run)
                if hidden is not None:
                    hidden = _zero_if(hidden, ~finite)
            window_loss += torch.where(finite, loss.detach().double(), 0.0)
            window_finite += finite.float()
            if cfg.grad_clip > 0:
                window_clip += (grad_norm > cfg.grad_clip).float()
            window_steps += 1
            step += 1
            if step % sync_every == 0 and device.type != "cpu":
                if int(bad_max) >= cfg.max_bad_steps:
                    raise NonFiniteLossError(
                        f"loss was not finite for {int(bad_max)} steps in a row before step {step}; stopped "
                        f"without saving (last good checkpoint kept); try a lower --lr")
                bad_max.zero_()
            if step % cfg.log_every == 0:
                now = time.perf_counter()
                rate = window_steps * chars_per_step / max(now - window_t, 1e-9)
                if dist_info.enabled:  # the logged loss is the mean over every rank's finite steps
                    torch.distributed.all_reduce(window_loss)
                    torch.distributed.all_reduce(window_finite)
                mean = float(window_loss.item()) / max(float(window_finite.item()), 1.0)
                gnorm = float(grad_norm.item())
                log({"kind": "train", "step": step, "elapsed": round(elapsed(), 3), "train_loss": mean,
                     "lr": lr, "grad_norm": gnorm, "clip_frac": float(window_clip.item()) / window_steps,
                     "chars_per_s": rate})
                report(Progress("log", step, total_steps, elapsed(), cfg.time_budget, train_loss=mean, lr=lr,
                                grad_norm=gnorm, chars_per_s=rate))
                window_loss.zero_()
                window_finite.zero_()
                window_clip.zero_()
                window_steps, window_t = 0, time.perf_counter()
            if step % cfg.eval_every == 0:
                evaluate_and_save()
                # every rank stops together: only the main rank evaluates
                if cfg.patience and all_max(dist_info, int(stale >= cfg.patience)):
                    stopped_early = True
                    msg = (f"early stop: no new best validation loss in {cfg.patience} evaluations "
                           f"(best {best_val:.4f} nats/char)")
                    log({"kind": "stop", "step": step, "elapsed": round(elapsed(), 3), "reason": msg})
                    report(Progress("stop", step, total_steps, elapsed(), cfg.time_budget, text=msg))
                    break
            if cfg.sample_length and is_sample_step(cfg, step) and dist_info.is_main:
                draw_sample()
        if saved_step != step:
            evaluate_and_save()
            if cfg.sample_length and dist_info.is_main:
                draw_sample()
    finally:
        metrics.close()
        samples.close()
    report(Progress("end", step, total_steps, elapsed(), cfg.time_budget, val_loss=last_val, text=str(latest)))
    return TrainResult(run_dir, step, elapsed(), last_val, best_val if math.isfinite(best_val) else None, latest,
                       stopped_early)


def _total_steps(cfg: TrainConfig, batcher: StreamBatcher) -> int | None:
    if cfg.max_iters is not None:
        return cfg.max_iters
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * batcher.batches_per_epoch))
    if cfg.time_budget is not None:
        return None
    return batcher.batches_per_epoch  # no rule given: one epoch


def _apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _zero_if(hidden, flag: torch.Tensor):
    if isinstance(hidden, tuple):
        return tuple(torch.where(flag, torch.zeros_like(h), h) for h in hidden)
    return torch.where(flag, torch.zeros_like(hidden), hidden)


def _training_state(step: int, elapsed: float, best_val: float, optimizer: torch.optim.Optimizer, hidden,
                    cfg: TrainConfig, evals_since_best: int = 0) -> dict[str, Any]:
    """Everything besides the weights that an exact resume needs: tensors and primitives only."""
    if isinstance(hidden, tuple):
        hidden = [h.detach().float().cpu() for h in hidden]
    elif hidden is not None:
        hidden = hidden.detach().float().cpu()
    return {"step": step, "elapsed": elapsed, "best_val": best_val, "optimizer": optimizer.state_dict(),
            "rng": rng_state(), "hidden": hidden, "train_config": to_dict(cfg), "evals_since_best": evals_since_best}


def _check_same_run(loaded: LoadedModel, model_cfg: ModelConfig, vocab, corpus_sha256: str) -> None:
    if loaded.corpus_sha256 != corpus_sha256:
        raise ResumeMismatchError("--resume: the corpus differs from the one this run was trained on "
                                  "(sha256 mismatch); resume with the original file or start a new run")
    if loaded.vocab != vocab:
        raise ResumeMismatchError("--resume: the vocabulary differs from the run's")
    if loaded.model_cfg != model_cfg:
        raise ResumeMismatchError(f"--resume: the model config differs from the run's ({loaded.model_cfg})")


def _write_run_files(run_dir: Path, data: Corpus, model_cfg: ModelConfig, cfg: TrainConfig) -> None:
    """The human-readable sidecars (config.json, vocab.json); loading never depends on them."""
    config = {
        "charnn_version": __version__,
        "torch_version": torch.__version__,
        "model": to_dict(model_cfg),
        "train": to_dict(cfg),
        "data": to_dict(data.data),
        "corpus": {"path": str(Path(data.path).resolve()), "sha256": data.sha256, "chars": len(data.ids)},
        "vocab_size": len(data.vocab),
    }
    atomic_write(run_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    atomic_write(run_dir / "vocab.json", (data.vocab.to_json() + "\n").encode())


# --- corpus loading and DDP plumbing (single-process runs pass straight through) ------------------------

def _load_corpus(path: str | os.PathLike, data_cfg: DataConfig, cache_dir, on_encode, info: DistInfo) -> Corpus:
    """Encode in memory, or through the on-disk cache; under DDP each node's local rank 0 builds it first."""
    from charnn.corpus_cache import load_corpus

    def load(report_to):
        if cache_dir is None:
            return encode_file(path, data_cfg)
        return load_corpus(path, data_cfg, cache_dir=cache_dir, on_progress=report_to)

    if not info.enabled:
        return load(on_encode)
    data, error = None, None
    for turn in (0, 1):  # turn 0: local rank 0 encodes; turn 1: the others open what it wrote
        if (info.local_rank == 0) == (turn == 0):
            try:
                data = load(on_encode if info.is_main else None)
            except CharnnError as err:
                error = err
        barrier(info)
    agree(info, error)
    return data


def _check_same_corpus(data: Corpus, info: DistInfo) -> None:
    """Every rank must train on the same ids: compare corpus sha256, vocabulary and length across ranks."""
    if not info.enabled:
        return
    import hashlib

    mine = (data.sha256, hashlib.sha256(data.vocab.to_json().encode()).hexdigest(), len(data.ids), data.path)
    seen: list[Any] = [None] * info.world
    torch.distributed.all_gather_object(seen, mine)
    for rank, theirs in enumerate(seen):
        if theirs[:3] != seen[0][:3]:
            what = "sha256" if theirs[0] != seen[0][0] else "vocabulary or decoding"
            raise DataError(f"the corpus differs between processes: rank 0 read {seen[0][3]} ({what} "
                            f"{seen[0][0][:12]}), rank {rank} read {theirs[3]} ({theirs[0][:12]}); every "
                            f"process must train on the same file with the same options")


def _wrap_ddp(model: CharRNN, device: torch.device, info: DistInfo):
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _rank_rows(hidden, info: DistInfo):
    """This rank's rows (streams) of a full-batch hidden state (L, B, H)."""
    if not info.enabled or hidden is None:
        return hidden
    if isinstance(hidden, tuple):
        return tuple(_rank_rows(h, info) for h in hidden)
    local = hidden.shape[1] // info.world
    return hidden[:, info.rank * local:(info.rank + 1) * local].contiguous()


def _gather_hidden(hidden, info: DistInfo):
    """The full-batch hidden state, rows in rank order (what a single process would hold): resume is exact
    with any number of processes. A collective under DDP; the result matters on rank 0 only."""
    if not info.enabled or hidden is None:
        return hidden
    if isinstance(hidden, tuple):
        return tuple(_gather_hidden(h, info) for h in hidden)
    parts = [torch.empty_like(hidden) for _ in range(info.world)]
    torch.distributed.all_gather(parts, hidden.detach().contiguous())
    return torch.cat(parts, dim=1)


__all__ = ["Progress", "TrainResult", "train", "resume_configs", "learning_rate"]
