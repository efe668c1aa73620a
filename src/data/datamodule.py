"""The DataModule of sentence pairs: splits from files or carved by premise group, tokenized and
cached, batched by length for training and evaluation, and its position in an epoch for exact resumes.

A split is a file (local, or a file of a Hub dataset repo) with two text columns and a label
column. Labels become float target scores through a named label map. Rows with an unknown label
or an empty text are dropped and counted; anything that makes a whole split unusable raises
`UserInputError` naming the file, row and column, before any model is loaded.
"""
import logging
import math
from pathlib import Path
from typing import Any, Literal, Mapping

import datasets
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from src.data.batching import PairBatchSampler, PairCollator, ResumePoint
from src.data.files import (
    SIMILARITY_LABELS,
    PairColumns,
    local_file,
    normalize_label,
    resolve_label_map,
    split_by_group,
)
from src.data.tokenized import TokenizedPairs, tokenized_pairs_file
from src.data.triplets import nli_triplets
from src.encoder import load_tokenizer
from src.errors import UserInputError
from src.evaluation.views import PAIR_VIEW_COLUMNS, LabelledPairCollator, check_split_labels, resolve_views
from src.schema import Fraction, NonNegativeInt, PositiveInt

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class PairDataModule(L.LightningDataModule):
    """Sentence pairs with float targets for bi-encoder training and evaluation.

    Each split comes from its own file, or is carved out of the train file by `val_fraction` /
    `test_fraction` (whole groups at a time). Files are read, cleaned and tokenized once; the result
    is cached under `cache_dir` keyed by the file's identity and every setting that shapes it.
    """

    # One parameter per `data.*` config key users type (conf/data/hebnli.yaml documents each), so
    # Hydra instantiates it as it stands; grouping them would rename the keys users know.
    def __init__(
        self,
        tokenizer: str,
        max_seq_length: PositiveInt,
        train_file: str | None,
        val_file: str | None = None,
        test_file: str | None = None,
        hub_dataset: str | None = None,
        hub_revision: str | None = None,
        columns: Mapping[str, str | None] | None = None,
        label_map: str = "similarity",
        label_maps: Mapping[str, Any] | None = None,
        # training rows: scored pairs, or (anchor, positive, optional hard negative) triplets
        train_format: Literal["pairs", "triplets"] = "pairs",
        triplet_labels: Mapping[str, str] | None = None,
        views: Mapping[str, bool | str] | None = None,
        view_labels: Mapping[str, str] | None = None,
        val_fraction: Fraction = 0.0,
        test_fraction: Fraction = 0.0,
        split_seed: int = 42,
        batch_size: PositiveInt = 16,
        eval_batch_size: PositiveInt = 64,
        group_by_length: bool = True,
        seed: int = 42,
        num_workers: NonNegativeInt = 0,
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        self.tokenizer_name = tokenizer
        self.max_seq_length = max_seq_length
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.hub_dataset = hub_dataset
        self.hub_revision = hub_revision
        self.columns = PairColumns(**(columns or {}))
        self.label_map_name = label_map
        self.label_map = resolve_label_map(label_map, label_maps or {"similarity": SIMILARITY_LABELS})
        self.train_format = train_format
        labels = {"positive": "entailment", "negative": "contradiction", **(triplet_labels or {})}
        self.triplet_labels = {role: normalize_label(label) for role, label in labels.items()}
        # the evaluation views beside the ten correlations (src/views.py), on val and test
        # (positive and negative labels: the triplets' unless set)
        chosen = {role: normalize_label(label) for role, label in (view_labels or {}).items()}
        self.view_labels = {**self.triplet_labels, **chosen}
        self.eval_views = resolve_views(views or {}, self.label_map_name, self.label_map, self.view_labels)
        # a split file the user names wins over a carve fraction (which an experiment may have set)
        self.fractions = {name: f for name, f in (("val", val_fraction), ("test", test_fraction)) if f > 0}
        for name in [name for name in self.fractions if self.files[name]]:
            log.info("data: the %s split is data.%s_file=%s (data.%s_fraction=%s is not used)",
                     name, name, self.files[name], name, self.fractions.pop(name))
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.group_by_length = group_by_length
        self.seed = seed
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "hebrew-sentence-embeddings")
        self.trust_remote_code = trust_remote_code
        self.splits: dict[str, datasets.Dataset] = {}
        self._tokenizer = None
        # mid-epoch resume: where a checkpoint left the epoch, and the train sampler that continues it
        self._resume_point: ResumePoint | None = None
        self._resumed_step = 0
        self._train_sampler: PairBatchSampler | None = None
        # evaluation needs only the split it scores; training and carving need the train file
        if not train_file and (self.fractions or not (val_file or test_file)):
            raise UserInputError("data.train_file: not set")

    # -- reading and caching --------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name, self.max_seq_length, self.trust_remote_code)
        return self._tokenizer

    def load_split_file(self, split: str) -> datasets.Dataset:
        """Read, clean and tokenize a split's file, or load the cached result."""
        path = local_file(self.files[split], f"data.{split}_file", self.hub_dataset, self.hub_revision)
        return tokenized_pairs_file(path, self.columns, self.label_map, self.tokenizer, self.max_seq_length, self.cache_dir)

    def prepare_data(self) -> None:
        """Validate and cache every split (rank 0 only under DDP). Cheap when cached."""
        for split in SPLITS:
            if self.files[split]:
                table = self.load_split_file(split)
                if split != "train":
                    self._check_view_labels(split, table, self.files[split])
                if split == "train" and self.fractions:
                    # an empty carved split, or one lacking a view's labels, fails now, not after the model loads
                    for carved, indices in self._carve(table).items():
                        if carved != "train":
                            source = f"carved from {self.files[split]}"
                            self._check_view_labels(carved, table.select(indices), source)

    def _check_view_labels(self, split: str, table: datasets.Dataset, source: str) -> None:
        check_split_labels(split, source, table["label"], self.eval_views, self.view_labels)

    def _carve(self, train: datasets.Dataset) -> dict[str, np.ndarray]:
        """Row indices of the train file's carved splits (train, val, test); none may be empty."""
        carved = split_by_group(train["group"], self.fractions, self.split_seed)
        for split, indices in carved.items():
            if len(indices) == 0:
                raise UserInputError(
                    f"data: the {split} split has no rows ({len(train)} rows in {len(set(train['group']))} "
                    f"premise groups, val_fraction={self.fractions.get('val', 0)}, "
                    f"test_fraction={self.fractions.get('test', 0)}); adjust the fractions or add data"
                )
        return carved

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for split in SPLITS:
            if self.files[split]:
                self.splits[split] = self.load_split_file(split)
        if self.fractions:
            train = self.splits["train"]
            for split, indices in self._carve(train).items():
                self.splits[split] = train.select(indices)
        if self.train_format == "triplets" and "train" in self.splits:  # after carving, so no held-out premise is trained on
            self.splits["train"] = nli_triplets(self.splits["train"], **self.triplet_labels)
        for split, table in self.splits.items():
            if len(table) == 0:
                raise UserInputError(
                    f"data: the {split} split has no rows (val_fraction={self.fractions.get('val', 0)}, "
                    f"test_fraction={self.fractions.get('test', 0)}); adjust the fractions or add data"
                )

    # -- mid-epoch resume: Lightning saves this state in checkpoints and hands it back on resume ---

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in the epoch: which pairs every rank together has trained.

        Counted by the training loop, not the loader, which has already prefetched the next batch.
        Stored as pairs, not batches, so a run can resume with another batch size or number of
        ranks and still train each remaining pair exactly once.
        """
        if self.trainer is None or self.trainer.state.fn != "fit" or self._train_sampler is None:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        trained = self._train_sampler.trained_after(done)
        return {
            "epoch": self._train_sampler.epoch,
            "batches_done": done,
            "global_step": self.trainer.global_step,
            "pairs": len(trained),
            # a bit per pair: 37 kB for 300,000 pairs; a tensor, so checkpoints load with weights_only
            "trained": torch.from_numpy(np.packbits(trained)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Lightning calls this before it asks for the train loader, which then skips what was done."""
        if not state:
            self._resume_point, self._resumed_step = None, 0
            return
        if "trained" not in state:
            raise UserInputError(
                "ckpt_path: this checkpoint was saved by an older version of the toolkit that recorded the epoch "
                "position in batches, which cannot be resumed exactly; resume it with that version, or start a new run"
            )
        trained = np.unpackbits(state["trained"].numpy(), count=state["pairs"]).astype(bool)
        self._resume_point = ResumePoint(state["epoch"], trained, state["batches_done"])
        self._resumed_step = state["global_step"]

    def planned_optimizer_steps(self, max_epochs: int, accumulate: int) -> int | None:
        """Optimizer steps of the whole run when it resumes an epoch with another layout (batch size,
        ranks), for the learning-rate schedule; None when Lightning's own estimate is right."""
        sampler = self._train_sampler
        if sampler is None or not sampler.relaid():
            return None
        left_this_epoch = len(sampler) - sampler.resume_point.batches_done
        later_epochs = max_epochs - sampler.epoch - 1
        return (
            self._resumed_step
            + math.ceil(left_this_epoch / accumulate)
            + later_epochs * math.ceil(sampler.epoch_length() / accumulate)
        )

    # -- loaders -----------------------------------------------------------------------------------

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, split: str, train: bool) -> DataLoader:
        views = () if train else self.eval_views
        pairs = TokenizedPairs(self.splits[split], PAIR_VIEW_COLUMNS if views else ())
        pad = self.tokenizer.pad_token_id
        collate = (
            LabelledPairCollator(pad, views, self.view_labels["positive"], self.view_labels["negative"])
            if views
            else PairCollator(pad)
        )
        world_size, rank = self._rank()
        sampler = PairBatchSampler(
            pairs.lengths,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            group_by_length=self.group_by_length,
            seed=self.seed,
            num_replicas=world_size,
            rank=rank,
            even_ranks=train,
        )
        if train:
            self._train_sampler = sampler
            # the epoch this loader starts in: a loader with workers draws its first batches before
            # Lightning calls set_epoch (the trainer's epoch is 0 until a checkpoint's loops are restored)
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
            point = self._resume_point
            if point is not None and epoch > point.epoch:  # a loader rebuilt after the resumed epoch
                point = self._resume_point = None
            sampler.set_epoch(epoch)
            if point is not None and point.trained.all():  # saved at an epoch's end: the next starts afresh
                sampler.set_epoch(point.epoch + 1)
            elif point is not None:
                sampler.resume(point)
                if sampler.relaid():
                    self._note_relayout(sampler, point)
        return DataLoader(
            pairs,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _note_relayout(self, sampler: PairBatchSampler, point: ResumePoint) -> None:
        """The resumed epoch is cut into batches differently than the checkpoint's run did (another
        batch size or number of ranks): say so, and keep later epochs right."""
        log.warning(
            "resuming epoch %d with another batch size or number of ranks than the checkpoint's run: its %d "
            "untrained pairs are cut into %d new batches per rank (each pair once); the learning-rate schedule "
            "is laid out for the new step count",
            point.epoch, int((~point.trained).sum()), len(sampler) - point.batches_done,
        )
        # Lightning sizes its epoch loop by this loader's length; the next epoch has the full
        # length again, so the loader must be rebuilt then
        self.trainer.reload_dataloaders_every_n_epochs = 1

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.splits:
            raise UserInputError("data.train_file: not set")
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", train=False) if "val" in self.splits else []

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test", train=False) if "test" in self.splits else []

    def has_split(self, split: str) -> bool:
        return bool(self.files[split]) or split in self.fractions
