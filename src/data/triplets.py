"""Triplets for in-batch-negatives objectives: (anchor, positive, hard negative) rows from NLI pairs."""
import logging
from collections import Counter

import datasets

from src.data.columns import input_ids_key
from src.errors import UserInputError

log = logging.getLogger(__name__)


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
    found = iter(pairs.select([row for row in negative_rows if row is not None])[input_ids_key("b")])
    hard_negatives = [next(found) if row is not None else [] for row in negative_rows]
    triplets = pairs.select(anchors).select_columns([input_ids_key("a"), input_ids_key("b"), "max_length"])
    lengths = [max(n, len(c)) for n, c in zip(triplets["max_length"], hard_negatives)]
    log.info("train: %d (anchor, positive) triplets, %d with a hard negative", len(anchors), sum(map(bool, hard_negatives)))
    return triplets.remove_columns("max_length").add_column(input_ids_key("c"), hard_negatives).add_column("max_length", lengths)
