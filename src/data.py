"""Sentence-pair data: reading and cleaning pair files, label maps, tokenization, the DataModule.

A split is a file (local, or a file of a Hub dataset repo) with two text columns and a label
column. Labels become float target scores through a named label map. Rows with an unknown label
or an empty text are dropped and counted; anything that makes a whole split unusable raises
`UserInputError` naming the file, row and column, before any model is loaded.
"""
import csv
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import datasets
import lightning as L
import numpy as np
import torch
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from src.batching import PairBatchSampler, PairCollator, ResumePoint
from src.errors import UserInputError
from src.schema import Fraction, NonNegativeInt, PositiveInt
from src.views import PAIR_VIEW_COLUMNS, LabelledPairCollator, check_split_labels, resolve_views

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FLOAT_LABELS = "float"  # a label map given as this string passes numeric labels through
CACHE_VERSION = "3"  # bump when the tokenized layout changes
DEFAULT_SIMILARITY_MAP = {"entailment": 1.0, "neutral": 0.5, "contradiction": 0.0}


@dataclass(frozen=True)
class PairColumns:
    """Which columns of a pair file hold what. `group` (optional) ties rows that share a premise."""

    sentence1: str = "translation1"
    sentence2: str = "translation2"
    label: str = "original_label"
    group: str | None = "promptID"


@dataclass
class PairTable:
    """The usable rows of one split, and what was dropped on the way."""

    sentence1: list[str] = field(default_factory=list)
    sentence2: list[str] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)


def normalize_label(value: Any) -> str:
    """Label names match case- and whitespace-insensitively ('Entailment ' == 'entailment')."""
    return " ".join(str(value).split()).lower()


def resolve_label_map(name: str, label_maps: Mapping[str, Any]) -> dict[str, float] | None:
    """The map named `name` as {normalized label: score}, or None for float pass-through."""
    if name not in label_maps:
        raise UserInputError(f"data.label_map: unknown label map {name!r}; known: {', '.join(label_maps)}")
    mapping = label_maps[name]
    if mapping == FLOAT_LABELS:
        return None
    return {normalize_label(label): float(score) for label, score in mapping.items()}


def iter_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, record) for a .jsonl/.json/.csv/.tsv/.parquet file; rows count from 1."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
                yield i, row
        elif suffix in (".csv", ".tsv"):
            # utf-8-sig: a byte-order mark (what Excel writes) is not part of the first column's name
            with path.open(encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                for i, row in enumerate(reader, start=1):
                    yield i, row
        elif suffix in (".jsonl", ".json"):
            yield from _iter_json(path)
        else:
            raise UserInputError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .csv, .tsv or .parquet)")
    except UnicodeDecodeError as e:
        row = _line_of_byte(path, e.start)
        raise UserInputError(f"{path}: row {row}: bytes that are not UTF-8 ({e.reason} at byte {e.start})") from None


def _iter_json(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as f:
        head = f.read(64).lstrip()
    if head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"["):  # a JSON array of records
        with path.open(encoding="utf-8-sig") as f:
            try:
                records = json.load(f)
            except json.JSONDecodeError as e:
                raise UserInputError(f"{path}: row {e.lineno}: not valid JSON ({e.msg})") from None
        yield from enumerate(records, start=1)
        return
    with path.open(encoding="utf-8-sig") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserInputError(f"{path}: row {i}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise UserInputError(f"{path}: row {i}: expected a JSON object, got {type(record).__name__}")
            yield i, record


def _line_of_byte(path: Path, offset: int) -> int:
    """1-based line number of a byte offset; for UTF-8 errors, which report bytes, not lines."""
    with path.open("rb") as f:
        return f.read(offset).count(b"\n") + 1


def read_pairs(path: Path, columns: PairColumns, label_map: dict[str, float] | None) -> PairTable:
    """Read one split into a PairTable, validating columns and labels."""
    table = PairTable()
    unknown: Counter = Counter()
    wanted = [columns.sentence1, columns.sentence2, columns.label]
    checked_columns = False
    for row, record in iter_rows(path):
        if not checked_columns:
            checked_columns = True
            missing = [c for c in wanted if c not in record]
            if missing:
                raise UserInputError(
                    f"{path}: row {row}: no column {missing[0]!r} (columns: {', '.join(map(str, record))})"
                )
        s1, s2, raw = record.get(columns.sentence1), record.get(columns.sentence2), record.get(columns.label)
        if not isinstance(s1, str) or not s1.strip() or not isinstance(s2, str) or not s2.strip():
            table.dropped["empty text"] += 1
            continue
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            table.dropped["missing label"] += 1
            continue
        if label_map is None:
            try:
                score = float(raw)
            except (TypeError, ValueError):
                raise UserInputError(
                    f"{path}: row {row}: column {columns.label!r}: label {raw!r} is not a number "
                    "(data.label_map=float needs numeric scores; use a named map for class labels)"
                ) from None
            if not math.isfinite(score):
                raise UserInputError(f"{path}: row {row}: column {columns.label!r}: label {raw!r} is not finite")
        else:
            key = normalize_label(raw)
            if key not in label_map:
                unknown[key] += 1
                table.dropped[f"unknown label {key!r}"] += 1
                continue
            score = label_map[key]
        table.sentence1.append(s1)
        table.sentence2.append(s2)
        table.score.append(score)
        table.label.append(normalize_label(raw))
        table.group.append(str(record.get(columns.group, row)) if columns.group else str(row))
    if not table.score:
        if unknown:
            counts = ", ".join(f"{label!r} x{n}" for label, n in unknown.most_common())
            raise UserInputError(
                f"{path}: column {columns.label!r}: no label is in the label map (found {counts}; "
                f"the map knows {', '.join(map(repr, label_map))})"
            )
        raise UserInputError(f"{path}: no usable rows (dropped: {dict(table.dropped) or 'the file is empty'})")
    if table.dropped:
        log.warning("%s: kept %d rows, dropped %s", path, len(table.score), dict(table.dropped))
    return table


def distinct_text_ids(texts: list[str]) -> list[int]:
    """Each text's id among the distinct texts of the list, numbered by first appearance."""
    ids: dict[str, int] = {}
    return [ids.setdefault(text, len(ids)) for text in texts]


def split_by_group(groups: list[str], fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Assign whole groups (rows sharing a premise) to splits, so no premise sits on both sides.

    Returns row indices per split name; `fractions` names the carved splits (e.g. val, test) and
    what is left is `train`. Deterministic in `seed`.
    """
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    group_split: dict[str, str] = {}
    start = 0
    for name, fraction in fractions.items():
        count = int(round(fraction * len(unique)))
        for i in order[start : start + count]:
            group_split[unique[i]] = name
        start += count
    assignment = np.array([group_split.get(g, "train") for g in groups])
    return {name: np.flatnonzero(assignment == name) for name in ("train", *fractions)}


class TokenizedPairs(Dataset):
    """A tokenized split backed by Arrow; batches are fetched column-wise in one call.

    Rows hold the token ids of each text column (`input_ids_a`, `input_ids_b`; `input_ids_c` for
    triplets' hard negatives), for scored pairs the `score`, and any `extra_columns`. Each batch
    carries its rows' positions in the split (`index`), which lets metrics drop the samples
    repeated to even out DDP ranks.
    """

    def __init__(self, table: datasets.Dataset, extra_columns: tuple[str, ...] = ()) -> None:
        self.table = table
        self._columns = table.select_columns(
            [c for c in table.column_names if c.startswith("input_ids_") or c == "score" or c in extra_columns]
        )

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self._columns[i], "index": i}

    def __getitems__(self, indices: list[int]) -> dict[str, list]:
        return {**self._columns[indices], "index": list(indices)}

    @property
    def lengths(self) -> np.ndarray:
        """Padded length each row needs: its longest sentence."""
        return np.asarray(self.table["max_length"])


class PairDataModule(L.LightningDataModule):
    """Sentence pairs with float targets for bi-encoder training and evaluation.

    Each split comes from its own file, or is carved out of the train file by `val_fraction` /
    `test_fraction` (whole groups at a time). Files are read, cleaned and tokenized once; the result
    is cached under `cache_dir` keyed by the file's identity and every setting that shapes it.
    """

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
        self.label_map = resolve_label_map(label_map, label_maps or {"similarity": DEFAULT_SIMILARITY_MAP})
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
        self._relaid = False
        # evaluation needs only the split it scores; training and carving need the train file
        if not train_file and (self.fractions or not (val_file or test_file)):
            raise UserInputError("data.train_file: not set")

    # -- reading and caching --------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from src.model import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_name, self.max_seq_length, self.trust_remote_code)
        return self._tokenizer

    def _local_path(self, split: str) -> Path:
        """The split's file on disk, fetched from the Hub dataset repo when it is not a local file."""
        name = self.files[split]
        path = Path(name).expanduser()
        if path.is_file():
            return path
        if self.hub_dataset is None:
            raise UserInputError(f"data.{split}_file: file not found: {path.resolve()}")
        from huggingface_hub import hf_hub_download

        try:
            return Path(
                hf_hub_download(self.hub_dataset, name, repo_type="dataset", revision=self.hub_revision)
            )
        except Exception as e:  # offline, missing file, no access: all the user's to fix
            raise UserInputError(
                f"data.{split}_file: cannot get {name!r} from the Hub dataset {self.hub_dataset!r} "
                f"({type(e).__name__}: the Hub may be unreachable from here); "
                f"download it and set data.{split}_file=/path/to/{Path(name).name}"
            ) from None

    def _cache_path(self, path: Path) -> Path:
        stat = path.stat()
        key = Hasher.hash(
            [
                CACHE_VERSION,
                str(path.resolve()),
                stat.st_size,
                stat.st_mtime_ns,
                self.columns,
                self.label_map,
                self.tokenizer_name,
                self.max_seq_length,
            ]
        )
        return self.cache_dir / "tokenized" / f"{path.stem}-{key}.arrow"

    def load_split_file(self, split: str) -> datasets.Dataset:
        """Read, clean and tokenize a split's file, or load the cached result."""
        path = self._local_path(split)
        cache = self._cache_path(path)
        if cache.exists():
            try:
                return datasets.Dataset.from_file(str(cache))
            except Exception as e:  # cut short (a full disk, a node that died mid-write) or overwritten
                log.warning("%s: unreadable tokenization cache (%s: %s); rebuilding it",
                            cache, type(e).__name__, str(e).strip().splitlines()[0][:200] if str(e).strip() else "")
                cache.unlink(missing_ok=True)
        table = read_pairs(path, self.columns, self.label_map)
        raw = datasets.Dataset.from_dict(
            {
                "sentence1": table.sentence1,
                "sentence2": table.sentence2,
                "score": table.score,
                "label": table.label,
                "group": table.group,
                # which pairs share a first or second sentence: the retrieval view's queries and corpus
                "text_id_a": distinct_text_ids(table.sentence1),
                "text_id_b": distinct_text_ids(table.sentence2),
            }
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        return raw.map(
            PairTokenizer(self.tokenizer, self.max_seq_length),
            batched=True,
            batch_size=10_000,
            cache_file_name=str(cache),
            new_fingerprint=cache.stem,  # the cache key already names every input; skip hashing the tokenizer
            desc=f"tokenizing {path.name}",
        )

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
        if sampler is None or not self._relaid:
            return None
        left_this_epoch = len(sampler) - self._resume_point.batches_done
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
            self._relaid = False
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
                self._relaid = self._note_relayout(sampler, point)
        return DataLoader(
            pairs,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _note_relayout(self, sampler: PairBatchSampler, point: ResumePoint) -> bool:
        """Whether the resumed epoch is cut into batches differently than the checkpoint's run did
        (another batch size or number of ranks); if so, say so and keep later epochs right."""
        if len(sampler) == sampler.epoch_length():
            return False
        log.warning(
            "resuming epoch %d with another batch size or number of ranks than the checkpoint's run: its %d "
            "untrained pairs are cut into %d new batches per rank (each pair once); the learning-rate schedule "
            "is laid out for the new step count",
            point.epoch, int((~point.trained).sum()), len(sampler) - point.batches_done,
        )
        # Lightning sizes its epoch loop by this loader's length; the next epoch has the full
        # length again, so the loader must be rebuilt then
        self.trainer.reload_dataloaders_every_n_epochs = 1
        return True

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


def nli_triplets(pairs: datasets.Dataset, positive: str, negative: str) -> datasets.Dataset:
    """(anchor, positive, hard negative) training rows from tokenized NLI pairs.

    Each pair labelled `positive` (premise, entailed hypothesis) becomes a row; its hard negative
    (`input_ids_c`) is the first hypothesis labelled `negative` in the same group (the premise's
    contradiction in HebNLI, grouped by `promptID`), or empty where the group has none.
    """
    labels, groups = list(pairs["label"]), list(pairs["group"])
    anchors = [i for i, label in enumerate(labels) if label == positive]
    if not anchors:
        found = ", ".join(f"{label!r} x{n}" for label, n in Counter(labels).most_common())
        raise UserInputError(
            f"data.triplet_labels.positive: no training pair is labelled {positive!r} (found {found}); "
            "triplets need (premise, entailed hypothesis) pairs"
        )
    first_negative: dict[str, int] = {}
    for i, (label, group) in enumerate(zip(labels, groups)):
        if label == negative:
            first_negative.setdefault(group, i)
    negative_rows = [first_negative.get(groups[i]) for i in anchors]
    found = iter(pairs.select([row for row in negative_rows if row is not None])["input_ids_b"])
    hard_negatives = [next(found) if row is not None else [] for row in negative_rows]
    triplets = pairs.select(anchors).select_columns(["input_ids_a", "input_ids_b", "max_length"])
    lengths = [max(n, len(c)) for n, c in zip(triplets["max_length"], hard_negatives)]
    log.info("train: %d (anchor, positive) triplets, %d with a hard negative", len(anchors), sum(map(bool, hard_negatives)))
    return triplets.remove_columns("max_length").add_column("input_ids_c", hard_negatives).add_column("max_length", lengths)


class PairTokenizer:
    """Token ids of both sentences of each row (special tokens added, truncated, unpadded).

    Calls the Rust tokenizer behind the model's fast tokenizer directly: `encode_batch_fast` skips
    offsets, and the ids skip the per-sentence conversion to Python dicts that
    `PreTrainedTokenizerFast.__call__` does. Each distinct sentence of a batch is tokenized once
    (NLI data repeats every premise for its hypotheses). `max_length` is the longer side, by which
    batches are length-grouped.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: settings stay ours
        self.backend.enable_truncation(max_length)
        self.backend.no_padding()

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        unique = list(dict.fromkeys(batch["sentence1"] + batch["sentence2"]))
        ids = dict(zip(unique, (encoding.ids for encoding in self.backend.encode_batch_fast(unique))))
        a = [ids[s] for s in batch["sentence1"]]
        b = [ids[s] for s in batch["sentence2"]]
        return {"input_ids_a": a, "input_ids_b": b, "max_length": [max(len(x), len(y)) for x, y in zip(a, b)]}
