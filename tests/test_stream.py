"""vaelab.data.stream: a .npy file's rows read in shuffled blocks, each rank its own shard.

Oracles: the file itself read whole by numpy (every batch row equals the row its index
names), set algebra over ranks (disjoint shards, each read only from its own blocks), the
counts the module's rule gives, and a binomial bound for the binarization.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaelab.data.stream import BlockBatches, RowFile, split_blocks

N, H, W = 1000, 4, 5          # 1000 rows of 20 values; blocks of 64: 15 full + one of 40


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "x.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, 256, size=(N, H, W), dtype=np.uint8))
    return path


def _batches(images, world=1, rank=0, batch=50, block=64, **kw):
    rows = RowFile(images)
    train, _ = split_blocks(rows.rows, block, 0.1, seed=3)
    return BlockBatches(rows, train, block, batch, seed=3, rank=rank, world_size=world, **kw)


def test_row_file_reads_the_rows_numpy_reads(images):
    rows, whole = RowFile(images), np.load(images).reshape(N, -1)
    assert (rows.rows, rows.width, rows.image_shape) == (N, H * W, (1, H, W))
    np.testing.assert_array_equal(rows.read(0, N), whole)
    np.testing.assert_array_equal(rows.read(997, 1000), whole[997:])
    np.testing.assert_array_equal(np.concatenate(list(rows.chunks(300))), whole)


@pytest.mark.parametrize("array, needs", [
    (np.zeros((4, 3), np.float64), "uint8 or float32"),
    (np.asfortranarray(np.zeros((4, 3), np.float32)), "C-ordered"),
    (np.zeros((4, 5, 5, 3), np.uint8), "channels first"),
])
def test_row_file_refuses_what_it_cannot_stream(tmp_path, array, needs):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=needs):
        RowFile(path)
    truncated = tmp_path / "short.npy"
    np.save(truncated, np.zeros((100, 10), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(ValueError, match="expected 100 rows"):
        RowFile(truncated)


def test_split_holds_out_whole_seeded_blocks():
    train, val = split_blocks(N, 64, 0.1, seed=3)
    assert len(val) == round(0.1 * 16) and sorted(train + val) == list(range(16))
    assert split_blocks(N, 64, 0.1, seed=3) == (train, val)
    assert split_blocks(N, 64, 0.1, seed=4)[1] != val
    assert split_blocks(N, 64, 0.0, seed=3) == (list(range(16)), [])
    with pytest.raises(ValueError, match="--stream-block"):
        split_blocks(100, 64, 0.9, seed=0)         # 2 blocks, both for validation


def test_every_batch_row_is_the_file_row_its_index_names(images):
    whole = torch.from_numpy(np.load(images).reshape(N, -1))
    batches = _batches(images)
    seen = []
    for x, index in batches.epoch(0):
        torch.testing.assert_close(x, whole[index].float() / 255, rtol=0, atol=0)
        seen.append(index)
    seen = torch.cat(seen)
    assert len(seen) == batches.rows_per_rank == len(set(seen.tolist()))
    assert len(list(batches.epoch(0))) == len(batches) == math.ceil(batches.rows_per_rank / 50)


def test_ranks_read_disjoint_shards_of_whole_blocks_the_same_number_of_rows(images):
    """Each rank's rows come from its own blocks only (it reads no other), no row is read
    twice, each rank takes as many rows and steps, and the blocks left out are fewer than
    the ranks."""
    world, block = 3, 64
    ranks = [_batches(images, world=world, rank=r, block=block) for r in range(world)]
    for epoch in (0, 1):
        rows = [torch.cat([i for _, i in b.epoch(epoch)]) for b in ranks]
        blocks = [set(b.my_blocks(epoch)) for b in ranks]
        for r in range(world):
            assert {int(i) // block for i in rows[r]} <= blocks[r]
            assert len(rows[r]) == ranks[0].rows_per_rank
            assert len(list(ranks[r].epoch(epoch))) == len(ranks[0])
        assert not set.intersection(*blocks) and sum(map(len, blocks)) == world * (14 // world)
        assert len(set(torch.cat(rows).tolist())) == sum(map(len, rows))
        assert len(set(ranks[0].blocks) - set.union(*blocks)) < world


def test_the_shuffle_permutes_blocks_and_rows_within_a_buffer(images):
    """The block order changes with the epoch and repeats for the same epoch; a batch draws
    its rows from the few blocks of one buffer, not in file order."""
    batches = _batches(images, buffer_blocks=2, batch=32)
    assert batches.my_blocks(0) == _batches(images, buffer_blocks=2).my_blocks(0)
    assert batches.my_blocks(0) != batches.my_blocks(1)
    first = [i for _, i in batches.epoch(0)]
    again = [i for _, i in batches.epoch(0)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    order = batches.my_blocks(0)
    assert {int(i) // 64 for i in first[0]} <= set(order[:2])     # the first buffer's blocks
    assert not torch.equal(first[0], first[0].sort().values)       # shuffled within it


def test_dynamic_binarization_draws_bernoulli_of_the_grey_levels(images):
    whole = torch.from_numpy(np.load(images).reshape(N, -1)).double() / 255
    draws, probs = [], []
    for x, index in _batches(images, binarize="dynamic").epoch(0):
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        draws.append(x.double())
        probs.append(whole[index])
    draws, probs = torch.cat(draws), torch.cat(probs)
    sd = float(torch.sqrt((probs * (1 - probs)).sum()))
    assert abs(float((draws - probs).sum())) < 5 * sd          # the sum of Bernoulli(p) draws


def test_too_few_blocks_for_the_ranks_and_static_binarization_are_refused(images):
    rows = RowFile(images)
    with pytest.raises(ValueError, match="at least one training block per process"):
        BlockBatches(rows, [0, 1], 64, 10, world_size=3)
    with pytest.raises(ValueError, match="'static'"):
        BlockBatches(rows, [0, 1], 64, 10, binarize="static")
