"""Evaluation that stays exact under DDP: disjoint contiguous shards, no padding, equal step counts.

Lightning's default ``DistributedSampler`` pads a split by repeating samples until every process has the
same count, so metrics summed over processes count some samples twice (with 2 processes and 5,001 test
questions, one question is scored twice). The datamodules here cut each split into contiguous shards
whose sizes differ by at most one and never repeat a row; summed over processes, a metric's sums are
exactly the single-process sums, and concatenating the shards in rank order restores the split's order.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class RowsDataset(Dataset):
    """Map-style dataset whose items are whole batches: ``ds[idx]`` → a tuple of ``t[idx]``.

    Indexing tensors with a slice or an index tensor costs one gather per batch instead of one Python
    call and one collation per row, which dominates the cost of large batches of small rows.
    """

    def __init__(self, *tensors: Tensor) -> None:
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError("RowsDataset needs tensors with the same number of rows")
        self.tensors = tensors

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, idx: slice | Tensor) -> tuple[Tensor, ...]:
        return tuple(t[idx] for t in self.tensors)


class ShardedBatchSampler(DistributedSampler):
    """Yields one index set per batch (a ``slice``, or a LongTensor when shuffling).

    Rows are split into ``num_replicas`` contiguous shards whose sizes differ by at most one,
    with no padding. Each shard is cut into batches of ``batch_size``; a shard that would get
    one batch fewer than the largest splits its last batch in two, so every process runs the
    same number of steps (DDP collectives must stay in lock-step). Being a
    ``DistributedSampler``, Lightning leaves it in place instead of injecting its own.
    With one process it yields the plain sequence of batches.
    """

    def __init__(
        self,
        n_rows: int,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(range(n_rows), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.n_rows, self.batch_size = n_rows, max(1, int(batch_size))

    def shard(self) -> tuple[int, int]:
        """This rank's rows ``[start, stop)`` of the (possibly permuted) split."""
        base, extra = divmod(self.n_rows, self.num_replicas)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def _bounds(self) -> list[tuple[int, int]]:
        start, stop = self.shard()
        base, extra = divmod(self.n_rows, self.num_replicas)
        largest = base + (1 if extra else 0)
        n_batches = max(1, math.ceil(largest / self.batch_size))
        cuts = list(range(start, stop, self.batch_size)) + [stop]
        bounds = list(zip(cuts[:-1], cuts[1:])) or [(start, stop)]
        while len(bounds) < n_batches:
            a, b = bounds.pop()
            mid = (a + b + 1) // 2
            bounds += [(a, mid), (mid, b)]
        return bounds

    def __iter__(self) -> Iterator[slice | Tensor]:  # type: ignore[override]
        bounds = self._bounds()
        if not self.shuffle:
            return iter([slice(a, b) for a, b in bounds])
        # Same permutation on every rank: seeded by seed and epoch only.
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n_rows, generator=g)
        return iter([perm[a:b] for a, b in bounds])

    def __len__(self) -> int:
        return len(self._bounds())


class ResumableLoader(DataLoader):
    """A training loader whose order is a function of (seed, epoch) and whose place in an epoch survives a
    checkpoint.

    Lightning stores ``state_dict()`` of the training loaders in every checkpoint and, when a run restarts
    from one written in the middle of an epoch (``labbook`` writes one when SIGTERM/SIGINT stops a run),
    passes it to ``load_state_dict`` before iterating: the next pass then skips the batches already
    trained, so each sample is still seen once in that epoch. Lightning restores its own counters but
    would otherwise serve the epoch again from its first batch.

    Before each pass the loader sets its sampler's epoch (Lightning does so only *after* the first pass of a
    resumed run has started, which would replay epoch 0's order) and re-seeds its ``generator``, if it has
    one, with ``seed + epoch``: the order of every epoch is the same whether or not the run was resumed.

    ``trainer``: where the epoch and the count of trained batches are read (None: epoch 0, never resumed).
    """

    def __init__(self, *args: Any, trainer: Any = None, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trainer, self.seed = trainer, seed
        self._skip = 0

    def _epoch(self) -> int:
        # Lightning counts an epoch as processed once its batches are done: during epoch e, e are processed.
        return self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0

    def __iter__(self) -> Iterator[Any]:
        epoch = self._epoch()
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)
        if self.seed is not None and self.generator is not None:
            self.generator.manual_seed(self.seed + epoch)
        batches = super().__iter__()
        skip, self._skip = self._skip, 0
        for _ in range(skip):
            next(batches)
        return batches

    def state_dict(self) -> dict[str, int]:
        """Where this epoch stands: its number, the batches already trained, the processes sharing it."""
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current if self.trainer is not None else None
        distributed = dist.is_available() and dist.is_initialized()
        return {"epoch": self._epoch(), "batches_done": progress.processed if progress is not None else 0,
                "world_size": dist.get_world_size() if distributed else 1}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = int(state.get("batches_done", 0))


def sharded_loader(*tensors: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                   num_workers: int = 0, trainer: Any = None) -> DataLoader:
    """A loader of ``(t[batch] for t in tensors)`` batches over this process's shard (see module doc).

    ``trainer``: the training loader's (a :class:`ResumableLoader`: its order follows Lightning's epoch and a
    run restarted mid-epoch continues where it stopped); evaluation loaders need none.
    """
    sampler = ShardedBatchSampler(tensors[0].shape[0], batch_size, shuffle=shuffle, seed=seed)
    return ResumableLoader(RowsDataset(*tensors), batch_size=None, sampler=sampler, num_workers=num_workers,
                           persistent_workers=num_workers > 0, trainer=trainer)
