"""Batch sampling: a fresh order every epoch, every pair once per epoch on any number of ranks,
resuming an epoch with any batch size or number of ranks; and pair collation."""
import numpy as np
import pytest

from src.data.batching import EpochOrder, PairBatchSampler, PairCollator, ResumePoint


def _epoch(sampler: PairBatchSampler) -> list[list[int]]:
    return list(iter(sampler))


@pytest.mark.parametrize("group_by_length", [True, False])
def test_training_sampler_sees_every_pair_once_per_epoch(group_by_length):
    lengths = np.random.default_rng(0).integers(5, 100, 1000)
    sampler = PairBatchSampler(lengths, 16, shuffle=True, group_by_length=group_by_length, seed=1)
    first = _epoch(sampler)
    assert sorted(i for b in first for i in b) == list(range(1000))
    assert len(first) == len(sampler) == 63
    sampler.set_epoch(1)
    assert _epoch(sampler) != first  # reshuffled per epoch


def test_length_grouping_cuts_padding():
    lengths = np.random.default_rng(0).integers(5, 120, 4000)

    def padded(sampler: PairBatchSampler) -> int:
        return sum(len(b) * lengths[b].max() for b in _epoch(sampler))

    plain = padded(PairBatchSampler(lengths, 16, shuffle=True, group_by_length=False))
    grouped = padded(PairBatchSampler(lengths, 16, shuffle=True, group_by_length=True))
    assert grouped < 0.7 * plain


def test_ranks_split_batches_evenly_for_training_and_without_repeats_for_eval():
    lengths = np.arange(1, 101)
    train = [PairBatchSampler(lengths, 8, shuffle=True, num_replicas=3, rank=r) for r in range(3)]
    assert len({len(_epoch(s)) for s in train}) == 1  # every rank steps the same number of times
    evals = [PairBatchSampler(lengths, 8, shuffle=False, num_replicas=3, rank=r, even_ranks=False) for r in range(3)]
    seen = [i for s in evals for b in _epoch(s) for i in b]
    assert sorted(seen) == list(range(100))  # each sample exactly once across ranks
    assert [len(s) for s in evals] == [len(_epoch(s)) for s in evals]


@pytest.mark.parametrize("n_pairs, batch_size, ranks", [(54, 64, 2), (3, 64, 4), (20, 8, 4)])
def test_every_rank_gets_an_eval_batch_even_with_fewer_batches_than_ranks(n_pairs, batch_size, ranks):
    """A rank with an empty eval loader would leave the others waiting in the metric sync (DDP hang)."""
    lengths = np.random.default_rng(0).integers(5, 50, n_pairs)
    evals = [PairBatchSampler(lengths, batch_size, shuffle=False, num_replicas=ranks, rank=r, even_ranks=False)
             for r in range(ranks)]
    per_rank = [_epoch(s) for s in evals]
    assert all(batches and all(batches) for batches in per_rank)  # >= 1 batch, none empty
    assert [len(s) for s in evals] == [len(b) for b in per_rank]
    seen = [i for batches in per_rank for b in batches for i in b]
    assert set(seen) == set(range(n_pairs))  # every pair evaluated; repeats only when pairs < ranks
    assert len(seen) == max(n_pairs, ranks)


def test_resume_with_the_same_layout_continues_with_the_uninterrupted_batches():
    sampler = PairBatchSampler(np.arange(100), 10, shuffle=True, seed=3)
    sampler.set_epoch(2)
    full = _epoch(sampler)
    resumed = PairBatchSampler(np.arange(100), 10, shuffle=True, seed=3)
    resumed.resume(ResumePoint(2, sampler.trained_after(4), batches_done=4))
    assert resumed.epoch == 2  # set by the resume itself: a prefetching loader draws before set_epoch
    assert _epoch(resumed) == full[4:]
    assert len(resumed) == len(full)  # as Lightning counts: the 4 done batches included
    resumed.set_epoch(3)
    assert sorted(i for b in _epoch(resumed) for i in b) == list(range(100))  # the next epoch is whole


def test_collator_pads_each_column_to_its_own_longest():
    batch = PairCollator(pad_token_id=0)(
        {"input_ids_a": [[1, 2, 3], [4]], "input_ids_b": [[5, 6], [7]], "score": [1.0, 0.0], "index": [0, 1]}
    )
    assert batch["input_ids_a"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["input_ids_b"].tolist() == [[5, 6], [7, 0]]
    assert batch["attention_mask_a"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["attention_mask_b"].sum(1).tolist() == [2, 1]


@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("group_by_length", [True, False])
def test_every_pair_once_per_epoch_on_any_number_of_ranks_and_a_fresh_order_each_epoch(ranks, group_by_length):
    lengths = np.random.default_rng(0).integers(5, 100, 203)  # 13 batches of 16: an incomplete last round
    samplers = [PairBatchSampler(lengths, 16, shuffle=True, group_by_length=group_by_length, num_replicas=ranks, rank=r)
                for r in range(ranks)]
    orders = []
    for epoch in range(3):
        for s in samplers:
            s.sampler.set_epoch(epoch)  # where Lightning calls it: dataloader.batch_sampler.sampler
        per_rank = [_epoch(s) for s in samplers]
        assert len({len(b) for b in per_rank}) == 1 and [len(s) for s in samplers] == [len(b) for b in per_rank]
        seen = [i for batches in per_rank for b in batches for i in b]
        assert sorted(seen) == list(range(203))  # each pair exactly once, none repeated to even out ranks
        orders.append(seen)
    assert orders[0] != orders[1] != orders[2] != orders[0]


def test_epoch_order_is_a_seeded_permutation():
    order = EpochOrder(50, shuffle=True, seed=1)
    first = list(order)
    assert sorted(first) == list(range(50)) and list(order) == first
    order.set_epoch(1)
    assert list(order) != first
    assert list(EpochOrder(5, shuffle=False)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("before, after", [((2, 16), (1, 8)), ((2, 16), (4, 16)), ((1, 8), (3, 5))])
def test_resume_with_another_batch_size_or_number_of_ranks_trains_each_remaining_pair_once(before, after):
    """A preempted job that comes back on another allocation: 2 ranks x 16 stopped after 3 batches
    each, resumed on 1 rank x 8 (and other changes)."""
    lengths = np.random.default_rng(1).integers(5, 60, 100)
    (ranks, size), (new_ranks, new_size) = before, after
    old = [PairBatchSampler(lengths, size, shuffle=True, seed=4, num_replicas=ranks, rank=r) for r in range(ranks)]
    for s in old:
        s.set_epoch(1)
    trained = old[0].trained_after(3)
    assert all(np.array_equal(trained, s.trained_after(3)) for s in old)  # any rank knows what all did
    done_before = [i for s in old for b in _epoch(s)[:3] for i in b]
    assert sorted(np.flatnonzero(trained)) == sorted(done_before)

    new = [PairBatchSampler(lengths, new_size, shuffle=True, seed=4, num_replicas=new_ranks, rank=r)
           for r in range(new_ranks)]
    for s in new:
        s.resume(ResumePoint(1, trained, batches_done=3))
    rest = [i for s in new for b in _epoch(s) for i in b]
    assert sorted(rest + done_before) == list(range(100))  # the remaining pairs, each once
    assert all(len(b) <= new_size for s in new for b in _epoch(s))
    assert len({len(s) for s in new}) == 1 and len(new[0]) == 3 + len(_epoch(new[0]))
    # and what the resumed ranks trained after 2 more batches is what a later checkpoint records
    after_two = new[0].trained_after(5)
    assert after_two.sum() == trained.sum() + sum(len(b) for s in new for b in _epoch(s)[:2])


def test_a_resume_point_from_another_train_split_is_refused():
    from src.errors import UserInputError

    sampler = PairBatchSampler(np.arange(10), 4, shuffle=True)
    with pytest.raises(UserInputError, match="train split of 12 pairs, but the train split now has 10"):
        sampler.resume(ResumePoint(0, np.zeros(12, dtype=bool), batches_done=1))

