"""Shuffled store batches: deterministic, a permutation per epoch, bounded, random access."""

from __future__ import annotations

import pytest
import torch

from workbench.sae.data import DataError, ShuffledBatches, TensorSource, scan_source


def _rows(n=1000, d=3):
    # row i carries its own index, so batches reveal which rows they hold
    return torch.arange(n, dtype=torch.float32)[:, None].repeat(1, d)


def test_each_epoch_is_a_permutation_mixing_shards():
    src = TensorSource(_rows(), shard_tokens=100)
    stream = ShuffledBatches(src, batch_size=50, buffer_tokens=300, seed=3)
    epoch = torch.cat([stream.batch(s) for s in range(20)])[:, 0].long()
    assert sorted(epoch.tolist()) == list(range(1000))
    first = stream.batch(0)[:, 0].long() // 100
    assert len(set(first.tolist())) >= 3  # one batch mixes rows of several shards
    second = torch.cat([stream.batch(s) for s in range(20, 40)])[:, 0].long()
    assert sorted(second.tolist()) == list(range(1000)) and not torch.equal(epoch, second)


def test_batches_are_a_function_of_seed_and_step():
    src = TensorSource(_rows(), shard_tokens=128)
    a = ShuffledBatches(src, 64, buffer_tokens=256, seed=1)
    b = ShuffledBatches(src, 64, buffer_tokens=256, seed=1)
    straight = [a.batch(s) for s in range(25)]
    for s in (17, 3, 24, 0, 16):  # random access, e.g. resuming at step s
        assert torch.equal(b.batch(s), straight[s])
    other = ShuffledBatches(src, 64, buffer_tokens=256, seed=2)
    assert not torch.equal(other.batch(0), straight[0])


def test_memory_is_one_window():
    src = TensorSource(_rows(5000), shard_tokens=100)
    stream = ShuffledBatches(src, 10, buffer_tokens=250, seed=0)
    for s in range(0, 500, 7):
        stream.batch(s)
        assert stream._window[1].shape[0] <= 250 + 100


def test_bad_sources_are_named():
    with pytest.raises(DataError, match="empty"):
        ShuffledBatches(TensorSource(torch.zeros(0, 4)), 8)
    acts = torch.randn(300, 4)
    acts[250, 1] = float("inf")
    src = TensorSource(acts, shard_tokens=100)
    with pytest.raises(DataError, match="in-memory shard 2: non-finite .* row 50"):
        scan_source(src)
    stream = ShuffledBatches(src, 100, buffer_tokens=100, seed=0)
    with pytest.raises(DataError, match="non-finite"):
        for s in range(3):
            stream.batch(s)


@pytest.mark.parametrize("world", [2, 4])
def test_gathered_slices_equal_full_batch_slices_and_read_a_share(world):
    acts = torch.randn(1000, 3)
    full_src, part_src = TensorSource(acts, 100), TensorSource(acts, 100)
    full = ShuffledBatches(full_src, 64, buffer_tokens=250, seed=5)
    steps = 47  # three epochs: batches straddle windows and epochs
    share = 64 // world
    for rank in range(world):
        part_src.bytes_read = 0
        part = ShuffledBatches(part_src, 64, buffer_tokens=250, seed=5, gather=True)
        for s in range(steps):
            want = full.batch(s)[rank * share : (rank + 1) * share]
            assert torch.equal(part.local(s, rank, world), want)
        # each process read its rows of the windows it visited: about 1/world of them
        assert part_src.bytes_read < 1.1 * 3 * acts.numel() * 4 / world
    assert full_src.bytes_read >= 3 * acts.numel() * 4  # every window whole, once a pass
    gathered = ShuffledBatches(part_src, 64, buffer_tokens=250, seed=5, gather=True)
    for s in (0, 15, 16, 31):
        assert torch.equal(gathered.batch(s), full.batch(s))


def test_gathered_rows_are_checked_and_named():
    acts = torch.randn(300, 4)
    acts[250, 1] = float("nan")
    src = TensorSource(acts, shard_tokens=100)
    with pytest.raises(DataError, match="in-memory shard 2: non-finite .* row 50"):
        for rank in (0, 1):  # one of the two processes reads row 250
            ShuffledBatches(src, 100, buffer_tokens=300, seed=0, gather=True).local(0, rank, 2)
    with pytest.raises(DataError, match="shard 2"):
        scan_source(src, rank=2, world=3)  # process 2 of 3 scans shard 2 (of 0, 1, 2)
    scan_source(src, rank=0, world=3)  # shard 0 only: clean
