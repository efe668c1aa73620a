"""Reading pair files: rows of a .jsonl/.json/.csv/.tsv/.parquet file (local, or fetched from a Hub
dataset repo), validated and cleaned into a PairTable, label maps turning labels into target
scores, and carving held-out splits by premise group.

Rows with an unknown label or an empty text are dropped and counted; anything that makes a whole
split unusable raises `UserInputError` naming the file, row and column, before any model is loaded.
"""
import csv
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from src.errors import UserInputError

log = logging.getLogger(__name__)

FLOAT_LABELS = "float"  # a label map given as this string passes numeric labels through
# graded similarity of NLI classes: what cosine can actually fit (conf/data/hebnli.yaml's default map)
SIMILARITY_LABELS = {"entailment": 1.0, "neutral": 0.5, "contradiction": 0.0}


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


def local_file(name: str, key: str, hub_dataset: str | None, hub_revision: str | None = None) -> Path:
    """The file `name` on disk, fetched from the Hub dataset repo `hub_dataset` when it is not a local
    file; `key` is the config key that named it (for the error)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if hub_dataset is None:
        raise UserInputError(f"{key}: file not found: {path.resolve()}")
    from huggingface_hub import hf_hub_download  # only when the Hub is used

    try:
        return Path(hf_hub_download(hub_dataset, name, repo_type="dataset", revision=hub_revision))
    except Exception as e:  # offline, missing file, no access: all the user's to fix
        raise UserInputError(
            f"{key}: cannot get {name!r} from the Hub dataset {hub_dataset!r} "
            f"({type(e).__name__}: the Hub may be unreachable from here); "
            f"download it and set {key}=/path/to/{Path(name).name}"
        ) from None
