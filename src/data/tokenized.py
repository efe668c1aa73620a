"""Tokenized splits: each pair's token ids (special tokens added, truncated, unpadded), computed once
per file and setting and cached as Arrow by `datasets`, then served column-wise to the loaders."""
import logging
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.fingerprint import Hasher
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from src.data.columns import input_ids_key, is_input_ids
from src.data.files import PairColumns, read_pairs

log = logging.getLogger(__name__)

CACHE_VERSION = "3"  # bump when the tokenized layout changes


def distinct_text_ids(texts: list[str]) -> list[int]:
    """Each text's id among the distinct texts of the list, numbered by first appearance."""
    ids: dict[str, int] = {}
    return [ids.setdefault(text, len(ids)) for text in texts]


def cache_path(path: Path, cache_dir: Path, *settings: Any) -> Path:
    """Where the tokenized `path` is cached: keyed by the file's identity and every setting that shapes it."""
    stat = path.stat()
    key = Hasher.hash([CACHE_VERSION, str(path.resolve()), stat.st_size, stat.st_mtime_ns, *settings])
    return cache_dir / "tokenized" / f"{path.stem}-{key}.arrow"


def tokenized_pairs_file(
    path: Path,
    columns: PairColumns,
    label_map: dict[str, float] | None,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    cache_dir: Path,
) -> datasets.Dataset:
    """Read, clean and tokenize a pair file, or load the cached result.

    A cache entry that cannot be read (cut short by a full disk or a node that died mid-write) is
    named in one line and rebuilt. Runs building the same entry at once are safe: `datasets` writes
    to a temporary file and renames it.
    """
    cache = cache_path(path, cache_dir, columns, label_map, tokenizer.name_or_path, max_seq_length)
    if cache.exists():
        try:
            return datasets.Dataset.from_file(str(cache))
        except Exception as e:  # cut short or overwritten
            log.warning("%s: unreadable tokenization cache (%s: %s); rebuilding it",
                        cache, type(e).__name__, str(e).strip().splitlines()[0][:200] if str(e).strip() else "")
            cache.unlink(missing_ok=True)
    table = read_pairs(path, columns, label_map)
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
        PairTokenizer(tokenizer, max_seq_length),
        batched=True,
        batch_size=10_000,
        cache_file_name=str(cache),
        new_fingerprint=cache.stem,  # the cache key already names every input; skip hashing the tokenizer
        desc=f"tokenizing {path.name}",
    )


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
            [c for c in table.column_names if is_input_ids(c) or c == "score" or c in extra_columns]
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
        return {input_ids_key("a"): a, input_ids_key("b"): b, "max_length": [max(len(x), len(y)) for x, y in zip(a, b)]}
