"""labbook.datamodules.sharding: disjoint, unpadded, contiguous shards with equal step counts on every rank."""

from __future__ import annotations

import pytest
import torch

from labbook.datamodules.sharding import RowsDataset, ShardedBatchSampler


@pytest.mark.parametrize("n_rows,batch_size,world", [(1000, 128, 2), (1001, 100, 2), (257, 128, 2), (10, 3, 3)])
def test_sharded_sampler_partitions_without_padding(n_rows: int, batch_size: int, world: int) -> None:
    per_rank = []
    for rank in range(world):
        sampler = ShardedBatchSampler(n_rows, batch_size, num_replicas=world, rank=rank)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        per_rank.append([i for b in batches for i in range(n_rows)[b]])
        assert all(0 < len(range(n_rows)[b]) <= batch_size for b in batches)
    counts = {len(ShardedBatchSampler(n_rows, batch_size, num_replicas=world, rank=r)) for r in range(world)}
    assert len(counts) == 1  # same number of steps on every rank
    everything = sorted(i for rows in per_rank for i in rows)
    assert everything == list(range(n_rows))  # each row exactly once


def test_sharded_sampler_shuffles_by_epoch_identically_on_all_ranks() -> None:
    def rows(rank: int, epoch: int) -> list[int]:
        s = ShardedBatchSampler(100, 16, shuffle=True, seed=3, num_replicas=2, rank=rank)
        s.set_epoch(epoch)
        return [int(i) for b in s for i in b]

    assert sorted(rows(0, 0) + rows(1, 0)) == list(range(100))
    assert rows(0, 0) == rows(0, 0) and rows(0, 0) != rows(0, 1)


def test_unshuffled_shards_are_contiguous_and_in_rank_order() -> None:
    # Evaluation relies on it: concatenating what the ranks scored restores the split's order (time order
    # for the series), and an odd split leaves no rank scoring a row twice.
    shards = [[i for b in ShardedBatchSampler(7, 2, num_replicas=2, rank=r) for i in range(7)[b]] for r in range(2)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6]]
    assert [ShardedBatchSampler(7, 2, num_replicas=2, rank=r).shard() for r in range(2)] == [(0, 4), (4, 7)]


def test_one_process_gets_plain_batches() -> None:
    assert list(ShardedBatchSampler(7, 3)) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    ds = RowsDataset(torch.arange(7), torch.arange(7) * 10)
    x, y = ds[slice(3, 6)]
    assert x.tolist() == [3, 4, 5] and y.tolist() == [30, 40, 50] and len(ds) == 7
    with pytest.raises(ValueError):
        RowsDataset(torch.arange(3), torch.arange(4))


def test_resumable_loader_orders_by_seed_and_epoch_and_skips_what_was_trained() -> None:
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    from labbook.datamodules.sharding import ResumableLoader, sharded_loader

    def fake_trainer(epoch: int, batches_done: int) -> SimpleNamespace:
        progress = lambda **kw: SimpleNamespace(current=SimpleNamespace(**kw))  # noqa: E731
        return SimpleNamespace(fit_loop=SimpleNamespace(epoch_progress=progress(processed=epoch),
                                                        epoch_loop=SimpleNamespace(batch_progress=progress(processed=batches_done))))

    def order(loader: ResumableLoader) -> list[int]:
        return [int(i) for batch in loader for i in batch[0]]

    x = torch.arange(40)
    make = {
        "sharded": lambda t: sharded_loader(x, batch_size=8, shuffle=True, seed=5, trainer=t),
        "generator": lambda t: ResumableLoader(TensorDataset(x), batch_size=8, shuffle=True, generator=torch.Generator(),
                                               seed=5, trainer=t),
    }
    for name, build in make.items():
        epoch2 = order(build(fake_trainer(2, 0)))
        assert sorted(epoch2) == list(range(40)) and epoch2 == order(build(fake_trainer(2, 0))), name
        assert epoch2 != order(build(fake_trainer(3, 0))), name  # each epoch its own order, a function of it alone
        stopped = build(fake_trainer(2, 3))
        state = stopped.state_dict()
        assert state == {"epoch": 2, "batches_done": 3, "world_size": 1}, name
        resumed = build(fake_trainer(2, 0))
        resumed.load_state_dict(state)
        assert order(resumed) == epoch2[24:], name  # the 3 trained batches are skipped, once
        assert order(resumed) == epoch2, name
