"""Bucketed batches: utterances of similar length together, reshuffled each epoch, sharded over ranks.

DistilHuBERT (s3prl `pretrain/distiller/dataset.py`) groups utterances of
similar length; DPHuBERT (`lightning.py`, BucketizeBatchSampler) bounds a batch
by its total samples and deals whole batches out to DDP ranks. Every random
choice is a pure function of (seed, epoch), so a resumed run is bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler



def jittered_length_order(lengths: np.ndarray, rng: np.random.Generator | None, jitter: float) -> np.ndarray:
    """Indices sorted by length x U(1 - jitter, 1 + jitter): similar lengths stay
    together, yet items of near-equal length regroup from one epoch to the next.
    `rng=None` sorts by the exact length (stable)."""
    if rng is None:
        return np.argsort(lengths, kind="stable")
    keys = lengths * rng.uniform(1.0 - jitter, 1.0 + jitter, size=len(lengths))
    return np.argsort(keys, kind="stable")


def fill_batches(
    order: np.ndarray, lengths: np.ndarray, batch_size: int | None, max_batch_samples: int | None
) -> list[list[int]]:
    """Cut `order` into consecutive batches of `batch_size` items, or of at most
    `max_batch_samples` padded samples (B x T_max, the memory a batch takes)."""
    batches, batch, longest = [], [], 0
    for i in order.tolist():
        longest_if_added = max(longest, int(lengths[i]))
        full = (
            len(batch) == batch_size
            if batch_size is not None
            else (len(batch) + 1) * longest_if_added > max_batch_samples
        )
        if batch and full:
            batches.append(batch)
            batch, longest_if_added = [], int(lengths[i])
        batch.append(i)
        longest = longest_if_added
    if batch:
        batches.append(batch)
    return batches


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar-length items, reshuffled each epoch, sharded over ranks, resumable.

    Each epoch (seeded by (seed, epoch)): items are ordered by jittered length
    (`jittered_length_order`), cut into batches (`fill_batches`), and the
    batches are shuffled. Every rank computes the same plan and takes batches
    rank, rank + world_size, ...; the last (n_batches mod world_size) batches
    of the shuffled plan are left out so all ranks run the same number of steps.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int | None = None,
        max_batch_samples: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        length_jitter: float = 0.1,
        rank: int = 0,
        world_size: int = 1,
    ):
        if (batch_size is None) == (max_batch_samples is None):
            raise ValueError(
                f"give exactly one of batch_size ({batch_size}) and max_batch_samples ({max_batch_samples})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if max_batch_samples is not None and self.lengths.max() > max_batch_samples:
            i = int(self.lengths.argmax())
            raise ValueError(
                f"item {i} has {self.lengths[i]} samples > max_batch_samples {max_batch_samples}"
            )
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size, self.max_batch_samples = batch_size, max_batch_samples
        self.seed, self.shuffle, self.length_jitter = seed, shuffle, length_jitter
        self.rank, self.world_size = rank, world_size
        self.epoch, self._start, self._yielded = 0, 0, 0

    def plan(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch` (every rank's), in the order they are dealt out."""
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        order = jittered_length_order(self.lengths, rng, self.length_jitter)
        batches = fill_batches(order, self.lengths, self.batch_size, self.max_batch_samples)
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def rank_batches(self, epoch: int) -> list[list[int]]:
        batches = self.plan(epoch)
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a position restored by load_state_dict survives only for its own epoch."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rank_batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0
        self._yielded = start
        for batch in self.rank_batches(self.epoch)[start:]:
            self._yielded += 1
            yield batch

    def state_dict(self, batches_done: int | None = None) -> dict:
        """Epoch and position. `batches_done` is the number of this epoch's
        batches the training loop has finished; by default the number this
        sampler has handed out, which runs ahead of training when DataLoader
        workers prefetch (num_workers > 0): pass the loop's count then."""
        done = self._yielded if batches_done is None else batches_done
        return {"epoch": self.epoch, "batch": done, "seed": self.seed,
                "world_size": self.world_size, "num_items": len(self.lengths)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`: the next iteration skips exactly its consumed batches."""
        mine = {"seed": self.seed, "world_size": self.world_size, "num_items": len(self.lengths)}
        for key, value in mine.items():
            if state[key] != value:
                raise ValueError(f"sampler state has {key}={state[key]}, this sampler has {value}: cannot resume")
        self.epoch, self._start, self._yielded = state["epoch"], state["batch"], state["batch"]
