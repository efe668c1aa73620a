"""How token columns are named, in tokenized splits and in batches.

Text column `c` (`a`: the first sentence, or anchor; `b`: the second, or positive; `c`: a hard
negative) holds its token ids as `input_ids_<c>` and, once padded in a batch, its mask as
`attention_mask_<c>`.
"""
from typing import Iterable

INPUT_IDS = "input_ids_"
ATTENTION_MASK = "attention_mask_"


def input_ids_key(column: str) -> str:
    return INPUT_IDS + column


def attention_mask_key(column: str) -> str:
    return ATTENTION_MASK + column


def is_input_ids(key: str) -> bool:
    return key.startswith(INPUT_IDS)


def text_columns(keys: Iterable[str]) -> tuple[str, ...]:
    """The text columns that `keys` (a batch, a table's column names) hold token ids for, in order."""
    return tuple(sorted(key[len(INPUT_IDS):] for key in keys if is_input_ids(key)))
