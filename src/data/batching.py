"""Batching: length-grouped (and resumable, DDP-aware) batch sampling, and pair collation.

Padding is the main waste when training on sentences: a batch pads to its longest sentence, so
drawing batches from neighbours in length cuts the padded tokens several-fold. Randomness is kept
the way Hugging Face's `group_by_length` keeps it: shuffle, cut into mega-batches, sort inside each.
"""
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from src.data.columns import attention_mask_key, input_ids_key, text_columns
from src.errors import UserInputError


class EpochOrder(Sampler[int]):
    """The order of a split's pairs in one epoch: a seeded permutation, a pure function of
    (seed, epoch); the identity when `shuffle` is off (evaluation).

    It is the batch sampler's `sampler` because that is where Lightning calls `set_epoch` at each
    epoch start (`dataloader.batch_sampler.sampler`, never the batch sampler itself).
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 42) -> None:
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self) -> np.random.Generator:
        """This epoch's random stream: first the permutation, then whatever the batcher draws."""
        return np.random.default_rng([self.seed, self.epoch])

    def __iter__(self) -> Iterator[int]:
        yield from (self.generator().permutation(self.n).tolist() if self.shuffle else range(self.n))

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class ResumePoint:
    """Where a checkpoint left an epoch: the pairs already trained in it (by every rank), and the
    batches Lightning counts as done (its loop resumes counting from there)."""

    epoch: int
    trained: np.ndarray  # bool per pair
    batches_done: int


class PairBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices, one list per batch, for one rank.

    - `shuffle=False` (evaluation): batches of length-sorted indices, so each pads minimally.
    - `shuffle=True, group_by_length=False`: plain seeded random order (the reference recipe).
    - `shuffle=True, group_by_length=True`: random mega-batches of `mega_batch_mult * batch_size`
      indices, sorted by length inside, cut into batches, then the batch order shuffled.

    The order is a pure function of (seed, epoch), so every rank computes the same batches and
    takes every `num_replicas`-th one. For training (`even_ranks=True`) every pair is seen once per
    epoch and all ranks step together: the last round's batches are split into one smaller batch
    per rank (only with fewer pairs left than ranks do a few repeat). For evaluation ranks may hold
    different numbers of batches, but every rank gets at least one (see `_shard`).

    `resume(point)` continues an epoch a checkpoint left: exactly the pairs not yet trained in it,
    each once, whatever the batch size or number of ranks was before. With the same layout these
    are the uninterrupted run's remaining batches; otherwise the remaining pairs, in this epoch's
    order, are cut into batches anew.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        shuffle: bool,
        group_by_length: bool = True,
        seed: int = 42,
        num_replicas: int = 1,
        rank: int = 0,
        even_ranks: bool = True,
        mega_batch_mult: int = 50,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.sampler = EpochOrder(len(self.lengths), shuffle, seed)
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self.num_replicas = num_replicas
        self.rank = rank
        self.even_ranks = even_ranks
        self.mega_batch_mult = mega_batch_mult
        self.resume_point: ResumePoint | None = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def resume(self, point: ResumePoint) -> None:
        if len(point.trained) != len(self.lengths):
            raise UserInputError(
                f"ckpt_path: the checkpoint stopped in epoch {point.epoch} of a train split of {len(point.trained)} pairs, "
                f"but the train split now has {len(self.lengths)}; resume with the same data (data.train_file and "
                "the carve settings), or start a new run"
            )
        self.resume_point = point
        self.set_epoch(point.epoch)  # the loader may start drawing before Lightning calls set_epoch

    def _resuming(self) -> ResumePoint | None:
        point = self.resume_point
        return point if point is not None and point.epoch == self.epoch else None

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        """`order` in consecutive batches of `batch_size` (the last one may be smaller)."""
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _epoch_batches(self) -> list[np.ndarray]:
        if not self.sampler.shuffle:
            return self._cut(np.argsort(-self.lengths, kind="stable"))
        rng = self.sampler.generator()
        order = rng.permutation(len(self.lengths))
        if not self.group_by_length:
            return self._cut(order)
        mega = self.batch_size * self.mega_batch_mult
        batches = []
        for start in range(0, len(order), mega):
            chunk = order[start : start + mega]
            batches.extend(self._cut(chunk[np.argsort(-self.lengths[chunk], kind="stable")]))
        return [batches[i] for i in rng.permutation(len(batches))]

    def _pass_batches(self) -> list[np.ndarray]:
        """The batches of the coming pass over this epoch (all ranks): the whole epoch, or what a
        resumed epoch has left."""
        batches = self._epoch_batches()
        point = self._resuming()
        if point is None:
            return batches
        left = [batch[~point.trained[batch]] for batch in batches]
        if all(len(kept) in (0, len(batch)) for kept, batch in zip(left, batches)):
            return [kept for kept in left if len(kept)]  # whole batches: the uninterrupted run's own
        return self._cut(np.concatenate(left))

    def _shard(self, batches: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Each rank's batches: every `num_replicas`-th one, the incomplete last round handled so
        that training ranks step together and every evaluation rank has a batch."""
        ranks = self.num_replicas
        complete = len(batches) - len(batches) % ranks
        shards = [batches[r:complete:ranks] for r in range(ranks)]
        last_round = batches[complete:]
        if not last_round:
            return shards
        if self.even_ranks or complete == 0:
            # training: every rank must step; evaluation: a rank without a batch would skip the
            # metric syncs the others wait in (a DDP hang). Split the round's pairs into one batch per
            # rank; with fewer pairs than ranks some repeat (the metrics drop repeats by index).
            pairs = np.concatenate(last_round)
            pieces = np.array_split(pairs, ranks)
            for r, piece in enumerate(pieces):
                shards[r].append(piece if len(piece) else pairs[[r % len(pairs)]])
        else:
            for r, batch in enumerate(last_round):
                shards[r].append(batch)
        return shards

    def _rank_batches(self) -> list[np.ndarray]:
        return self._shard(self._pass_batches())[self.rank]

    def trained_after(self, batches_done: int) -> np.ndarray:
        """Which pairs of this epoch every rank together has trained once each rank has done
        `batches_done` batches (counted as Lightning counts them, from the epoch's start)."""
        point = self._resuming()
        trained = point.trained.copy() if point is not None else np.zeros(len(self.lengths), dtype=bool)
        done_in_pass = batches_done - (point.batches_done if point is not None else 0)
        for shard in self._shard(self._pass_batches()):
            for batch in shard[:done_in_pass]:
                trained[batch] = True
        return trained

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._rank_batches():
            yield batch.tolist()

    def relaid(self) -> bool:
        """Whether this resumed epoch is cut differently than the checkpoint's run cut it (another
        batch size or number of ranks): Lightning then counts another length for it."""
        return self._resuming() is not None and len(self) != self.epoch_length()

    def epoch_length(self) -> int:
        """Batches per rank in a whole epoch (mega-batches hold whole batches, so grouping adds none)."""
        if not self.even_ranks:  # evaluation: ranks may differ
            return len(self._rank_batches())
        batches = -(-len(self.lengths) // self.batch_size)
        return -(-batches // self.num_replicas)

    def __len__(self) -> int:
        """Batches in this epoch as Lightning counts them: a resumed epoch's done ones included."""
        point = self._resuming()
        if point is None:
            return self.epoch_length()
        return point.batches_done + len(self._rank_batches())


class PairCollator:
    """Pads each text column of a batch to its own longest sentence.

    Rows carry `input_ids_<c>` for every text column `c` (`a`, `b`, ...); the batch gets
    `input_ids_<c>` and `attention_mask_<c>` of shape `[rows with a text in c, longest in c]`.
    Padding per column, not to the longest of all, matters: premises run about twice as long as
    hypotheses. Whether the columns then go through the encoder together or one by one is the
    model's choice.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def _pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(s) for s in sequences)
        input_ids = np.full((len(sequences), longest), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(sequences), longest), dtype=np.int64)
        for i, seq in enumerate(sequences):
            input_ids[i, : len(seq)] = seq
            attention_mask[i, : len(seq)] = 1
        return torch.from_numpy(input_ids), torch.from_numpy(attention_mask)

    def __call__(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        batch = {"index": torch.tensor(rows["index"], dtype=torch.long)}
        if "score" in rows:  # scored pairs; triplets have none
            batch["score"] = torch.tensor(rows["score"], dtype=torch.float32)
        for column in text_columns(rows):
            # an empty sequence is a missing text (a triplet without a hard negative): left out,
            # and a column with no text in this batch is left out altogether
            present = [seq for seq in rows[input_ids_key(column)] if seq]
            if present:
                batch[input_ids_key(column)], batch[attention_mask_key(column)] = self._pad(present)
        return batch
