"""The training split as parallel contiguous streams for truncated backpropagation through time: which
characters each step trains on, and which streams start it from a zero state (--state-reset), as pure functions
of (seed, step). Not the reading or encoding of text (charnn.data)."""

from __future__ import annotations

import random

import numpy as np
import torch

from charnn.errors import ConfigError, DataError

RESET_STREAM = 0xC01D5EED  # keeps the --state-reset draws apart from any other use of (seed, step)
RESHUFFLE_STREAM = 777  # keeps the --reshuffle orders apart from any other use of (seed, epoch)


def check_batch_shape(train_chars: int, *, batch_size: int, seq_len: int, world: int = 1) -> None:
    """Refuse a batch shape the training split cannot fill once, or that `world` processes cannot share."""
    need = batch_size * (seq_len + 1)
    if train_chars < need:
        raise DataError(
            f"training split has {train_chars} characters; one batch needs batch_size x (seq_len + 1) = "
            f"{batch_size} x {seq_len + 1} = {need}: lower --batch-size or --seq-len, or use more text"
        )
    if batch_size % world:
        raise ConfigError(f"--batch-size {batch_size} must be divisible by the number of processes {world}")


class StreamBatcher:
    """The training split laid out as `batch_size` parallel contiguous streams (truncated BPTT).

    N training ids, B rows of L = N // B ids each; batch k takes columns [kT, kT+T] of every row::

        ids:   a b c d e f g h i j k l m n o p q r s t u v w x     (N = 24, B = 4, T = 2)
        row 0: a b c d e f        batch 0: x = [a b]  y = [b c]    batch 1: x = [c d]  y = [d e]
        row 1: g h i j k l                 x = [g h]  y = [h i]             x = [i j]  y = [j k]
        row 2: m n o p q r                 ...
        row 3: s t u v w x

    Row r of batch k+1 starts exactly where row r of batch k stopped, so the hidden state carried from
    one batch to the next is the true left context (char-rnn, pytorch/examples word_language_model).
    Each epoch shifts every row by the same seeded offset within the row's unused tail, so windows do not
    align identically every epoch; the batch for a step is a pure function of (seed, step): resuming needs
    no iterator state. Under DDP each rank takes its own `batch_size // world` rows.

    With --reshuffle C every epoch after the first reads the text reordered: cut into chunks of C ids (the
    last partial chunk stays last), put in an order drawn from (seed, epoch), the rows laid over that as
    above. Nothing is copied: a position of the reordered text maps to its id's position in the split
    (`reordered`). A row's carried state then crosses into an unrelated chunk once every C ids, as at a
    document's end.

    With --state-reset P each row's carried state is zeroed before a batch with probability P, as if a
    document started there (`fresh_streams`), so the model also learns to start from the zero state that
    sampling, evaluation and the exports start from; without it, only step 0 and each new epoch do.
    """

    def __init__(
        self,
        ids: np.ndarray,
        *,
        batch_size: int,
        seq_len: int,
        seed: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world: int = 1,
        reshuffle: int = 0,
    ) -> None:
        n = len(ids)
        check_batch_shape(n, batch_size=batch_size, seq_len=seq_len, world=world)
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.row_len = n // batch_size
        self.chunk = reshuffle
        self.chunks = (batch_size * self.row_len) // reshuffle if reshuffle else 0  # whole chunks the rows read
        self._order: tuple[tuple, np.ndarray | torch.Tensor | None] | None = None  # ((epoch, device), order)
        self.batches_per_epoch = (self.row_len - 1) // seq_len
        self.slack = self.row_len - 1 - self.batches_per_epoch * seq_len
        local = batch_size // world
        self._local = slice(rank * local, (rank + 1) * local)  # this rank's rows of the whole batch
        rows = np.arange(self._local.start, self._local.stop, dtype=np.int64)
        self.device = torch.device(device)
        if self.device.type == "cpu":
            self._ids, self._rows = ids, rows * self.row_len
            self._cols = np.arange(seq_len + 1, dtype=np.int64)
        else:  # one resident copy on the device; batches are sliced there, no host transfer per step
            used = np.asarray(ids[: batch_size * self.row_len])
            dt = torch.uint8 if used.dtype == np.uint8 else torch.int32
            self._ids = torch.from_numpy(used.astype(np.uint8 if dt == torch.uint8 else np.int32)).to(device)
            self._rows = torch.from_numpy(rows * self.row_len).to(device)
            self._cols = torch.arange(seq_len + 1, device=device)

    def epoch_offset(self, epoch: int) -> int:
        if epoch == 0 or self.slack == 0:
            return 0
        return random.Random(self.seed * 1_000_003 + epoch).randint(0, self.slack)

    def chunk_order(self, epoch: int) -> np.ndarray | None:
        """Epoch `epoch`'s order of the chunks (chunk_order[j] is the j-th chunk read); None: the split's own."""
        if epoch == 0 or self.chunks < 2:
            return None
        return np.random.default_rng([RESHUFFLE_STREAM, self.seed, epoch]).permutation(self.chunks)

    def reordered(self, epoch: int, idx: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Positions `idx` in epoch `epoch`'s reading of the split -> the positions of their ids in the split."""
        key = (epoch, None if isinstance(idx, np.ndarray) else idx.device)
        if self._order is None or self._order[0] != key:
            order = self.chunk_order(epoch)
            if order is not None and key[1] is not None:
                order = torch.from_numpy(order).to(key[1])
            self._order = (key, order)
        order = self._order[1]
        if order is None:
            return idx
        C = self.chunk
        body = idx < self.chunks * C
        moved = order[(idx // C) * body] * C + idx % C  # outside the body: chunk 0, then discarded
        return np.where(body, moved, idx) if isinstance(idx, np.ndarray) else torch.where(body, moved, idx)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of global step `step` (0-based)."""
        return divmod(step, self.batches_per_epoch)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) for step `step`, each (B, T) int64; y is x shifted left by one."""
        epoch, k = self.position(step)
        start = self.epoch_offset(epoch) + k * self.seq_len
        idx = self.reordered(epoch, (self._rows + start)[:, None] + self._cols)  # (B, T+1)
        if isinstance(self._ids, np.ndarray):
            window = torch.from_numpy(self._ids[idx].astype(np.int64))
        else:
            window = self._ids[idx].long()
        return window[:, :-1], window[:, 1:]

    def fresh_streams(self, step: int, share: float) -> torch.Tensor | None:
        """Which of this rank's rows start batch `step` from a zero state: each of the whole batch's rows with
        probability `share`, drawn from (seed, step) alone, so a resume, or another number of processes (each
        taking its own rows' part), draws the same. A (B,) bool tensor on the batcher's device; None with
        `share` 0 (no draw, no cost)."""
        if share <= 0.0:
            return None
        draws = np.random.default_rng([RESET_STREAM, self.seed, step]).random(self.batch_size)  # (whole B,)
        fresh = torch.from_numpy(draws[self._local] < share)
        if self.device.type == "cuda":  # from pinned memory the copy is queued: the host does not wait for the GPU
            return fresh.pin_memory().to(self.device, non_blocking=True)
        return fresh.to(self.device)
