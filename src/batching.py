"""Batching: length-grouped (and resumable, DDP-aware) batch sampling, and pair collation.

Padding is the main waste when training on sentences: a batch pads to its longest sentence, so
drawing batches from neighbours in length cuts the padded tokens several-fold. Randomness is kept
the way Hugging Face's `group_by_length` keeps it: shuffle, cut into mega-batches, sort inside each.
"""
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class PairBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices, one list per batch, for one rank.

    - `shuffle=False` (evaluation): batches of length-sorted indices, so each pads minimally.
    - `shuffle=True, group_by_length=False`: plain seeded random order (the reference recipe).
    - `shuffle=True, group_by_length=True`: random mega-batches of `mega_batch_mult * batch_size`
      indices, sorted by length inside, cut into batches, then the batch order shuffled.

    The order is a pure function of (seed, epoch), so every rank computes the same batches and
    takes every `num_replicas`-th one. For training (`even_ranks=True`) ranks are padded with
    repeated batches so all step together; for evaluation they are not, and nothing is repeated,
    except that every rank gets at least one batch (see `_rank_batches`).
    `resume_at(epoch, n)` resumes mid-epoch: the next pass over that epoch starts at batch `n`.
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
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.even_ranks = even_ranks
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self._resume = (epoch, batches_done)

    def pending_skip(self) -> int:
        """How many batches the coming pass over the current epoch skips."""
        return self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0

    def _all_batches(self) -> list[np.ndarray]:
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        if not self.group_by_length:
            return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        mega = self.batch_size * self.mega_batch_mult
        batches = []
        for start in range(0, n, mega):
            chunk = order[start : start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def _rank_batches(self) -> list[np.ndarray]:
        batches = self._all_batches()
        if self.even_ranks and self.num_replicas > 1 and len(batches) % self.num_replicas:
            pad = self.num_replicas - len(batches) % self.num_replicas
            batches = batches + batches[:pad]
        if not self.even_ranks and 0 < len(batches) < self.num_replicas:
            # A rank without a batch would skip the metric and loss syncs the others wait in, and
            # DDP hangs: cut the (length-sorted) pairs into one smaller batch per rank instead.
            # With fewer pairs than ranks some pairs repeat; the metrics drop repeats by index.
            order = np.concatenate(batches)
            batches = [
                chunk if len(chunk) else order[[r % len(order)]]
                for r, chunk in enumerate(np.array_split(order, self.num_replicas))
            ]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._resume = self.pending_skip(), None
        for batch in self._rank_batches()[skip:]:
            yield batch.tolist()

    def __len__(self) -> int:
        n_batches = -(-len(self.lengths) // self.batch_size)
        if self.even_ranks:
            return -(-n_batches // self.num_replicas)
        return max(len(range(self.rank, n_batches, self.num_replicas)), 1 if n_batches else 0)


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
        for key in rows:
            if key.startswith("input_ids_"):
                column = key[len("input_ids_") :]
                # an empty sequence is a missing text (a triplet without a hard negative): left out,
                # and a column with no text in this batch is left out altogether
                present = [seq for seq in rows[key] if seq]
                if present:
                    batch[f"input_ids_{column}"], batch[f"attention_mask_{column}"] = self._pad(present)
        return batch
