"""Evaluation views: the ten correlations and, beside them, retrieval and classification.

Which optional views a split gets is the data's choice (`data.views`). Where a view is on, the
data module's evaluation batches carry its columns, and the model feeds every view whose columns
a batch carries:

- retrieval: `query_id` and `query_row` for each text of column a (`input_ids_a`), `document_id`
  and `document_row` for each text of column b, and `relevant`, `[n, 2]` (query id, document id)
  pairs. From a labelled pair split (`LabelledPairCollator`: first sentences are the queries,
  second sentences the documents, positive pairs the relevant ones) or a BEIR folder (`src.beir`).
- classification: `binary_label` of each pair (`src.evaluation.classification.POSITIVE`, `NEGATIVE`, `NEITHER`).
"""
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from src.data.batching import PairCollator
from src.errors import UserInputError
from src.evaluation.classification import (
    CLASSIFICATION_METRIC_NAMES,
    NEGATIVE,
    NEITHER,
    POSITIVE,
    PairClassificationMetrics,
)
from src.evaluation.retrieval import RETRIEVAL_METRIC_NAMES, RetrievalMetrics
from src.evaluation.similarity import METRIC_NAMES, metrics_table

# the label roles (data.view_labels) each optional view needs
VIEW_LABEL_ROLES = {"retrieval": ("positive",), "classification": ("positive", "negative")}
# what a pair split's rows need for the optional views, beside the token ids
PAIR_VIEW_COLUMNS = ("label", "text_id_a", "text_id_b")


@dataclass(frozen=True)
class View:
    """One group of evaluation numbers, as sentence-transformers' model cards group them."""

    title: str  # the model card's heading
    evaluator: str  # the sentence-transformers evaluator whose numbers these are
    metric_names: tuple[str, ...]
    primary: str  # shown in bold
    task_type: str  # the Hub's model-index task type
    description: str  # what is measured, in one line


SIMILARITY = View(
    title="Semantic Similarity",
    evaluator="EmbeddingSimilarityEvaluator",
    metric_names=METRIC_NAMES,
    primary="spearman_max",
    task_type="semantic-similarity",
    description="Pearson and Spearman correlation of four similarities of each pair with its target score",
)
RETRIEVAL = View(
    title="Information Retrieval",
    evaluator="InformationRetrievalEvaluator",
    metric_names=RETRIEVAL_METRIC_NAMES,
    primary="retrieval_ndcg@10",
    task_type="information-retrieval",
    description="each query's relevant documents ranked by cosine among the whole corpus",
)
CLASSIFICATION = View(
    title="Binary Classification",
    evaluator="BinaryClassificationEvaluator",
    metric_names=CLASSIFICATION_METRIC_NAMES,
    primary="classification_ap",
    task_type="binary-classification",
    description="positive vs negative pairs told apart by their cosine alone",
)
VIEWS = (SIMILARITY, RETRIEVAL, CLASSIFICATION)


def resolve_views(
    settings: Mapping[str, Any], label_map_name: str, label_map: Mapping[str, float] | None, labels: Mapping[str, str]
) -> tuple[str, ...]:
    """The optional views that run. Each setting is true, false or `auto`: on where the label map
    names every label the view needs (so off for numeric scores, `label_map=float`).

    `labels`: the normalized label of each role (positive, negative); `label_map`: the map named
    `label_map_name`, normalized label -> score, None for numeric scores.
    """
    for view in settings:
        if view not in VIEW_LABEL_ROLES:
            raise UserInputError(f"data.views.{view}: unknown view; known: {', '.join(VIEW_LABEL_ROLES)}")
    views = []
    for view, roles in VIEW_LABEL_ROLES.items():
        setting = settings.get(view, "auto")
        if setting not in (True, False, "auto"):
            raise UserInputError(f"data.views.{view}: {setting!r} is not true, false or auto")
        missing = [role for role in roles if label_map is None or labels[role] not in label_map]
        if setting is True and missing:
            role = missing[0]
            reason = (
                f"data.label_map={label_map_name!r} passes numeric scores, not class labels"
                if label_map is None
                else f"the label map has no label {labels[role]!r} (data.view_labels.{role})"
            )
            raise UserInputError(f"data.views.{view}: needs {role} pairs, but {reason}; set data.views.{view}=false")
        if setting is True or (setting == "auto" and not missing):
            views.append(view)
    return tuple(views)


def check_split_labels(
    split: str, source: str, labels: list[str], views: tuple[str, ...], roles: Mapping[str, str]
) -> None:
    """Stop with one line when a split (`source`: its file) lacks a label a view that is on needs."""
    counts = Counter(labels)
    for view in views:
        for role in VIEW_LABEL_ROLES[view]:
            if not counts[roles[role]]:
                found = ", ".join(f"{label!r} x{n}" for label, n in counts.most_common())
                raise UserInputError(
                    f"data.views.{view}: the {split} split ({source}) has no pair labelled {roles[role]!r} "
                    f"(found {found}); name its {role} label in data.view_labels.{role}, or set data.views.{view}=false"
                )


class LabelledPairCollator(PairCollator):
    """`PairCollator`'s pair batches plus the columns of the optional views that are on.

    Rows hold `PAIR_VIEW_COLUMNS` besides the token ids: the label (normalized) and the ids of the
    pair's two texts among the split's distinct first and second sentences.
    """

    def __init__(self, pad_token_id: int, views: tuple[str, ...], positive: str, negative: str) -> None:
        super().__init__(pad_token_id)
        self.views = views
        self.positive = positive
        self.negative = negative

    def __call__(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        batch = super().__call__(rows)
        positive = torch.tensor([label == self.positive for label in rows["label"]], dtype=torch.bool)
        if "retrieval" in self.views:
            query_id, document_id = torch.tensor(rows["text_id_a"]), torch.tensor(rows["text_id_b"])
            batch.update(
                query_id=query_id,
                query_row=batch["index"],
                document_id=document_id,
                document_row=batch["index"],
                relevant=torch.stack([query_id[positive], document_id[positive]], dim=1),
            )
        if "classification" in self.views:
            negative = torch.tensor([label == self.negative for label in rows["label"]], dtype=torch.bool)
            batch["binary_label"] = torch.where(positive, POSITIVE, torch.where(negative, NEGATIVE, NEITHER))
        return batch


class EvaluationViews(torch.nn.Module):
    """One stage's (validation or test) retrieval and classification metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.retrieval = RetrievalMetrics()
        self.classification = PairClassificationMetrics()

    def update(self, batch: Mapping[str, torch.Tensor], embeddings: Mapping[str, torch.Tensor]) -> None:
        """Feed each view whose columns `batch` carries; `embeddings` holds each text column's
        embeddings (`a`, `b`), where the batch has texts in it."""
        if "relevant" in batch:
            # a BEIR batch may hold only queries or only documents
            some = next(iter(embeddings.values()))
            none = some.new_empty(0, some.shape[1])
            self.retrieval.update(
                embeddings.get("a", none), batch["query_id"], batch["query_row"],
                embeddings.get("b", none), batch["document_id"], batch["document_row"],
                batch["relevant"],
            )
        if "binary_label" in batch:
            self.classification.update(embeddings["a"], embeddings["b"], batch["binary_label"], batch["index"])

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        """The numbers of every view that was fed (gathered over DDP ranks), then a fresh start."""
        values: dict[str, torch.Tensor] = {}
        for metric in (self.retrieval, self.classification):
            if metric.update_called:
                values.update(metric.compute())
                metric.reset()
        return values


def evaluation_tables(values: Mapping[str, float], prefix: str = "") -> dict[View, str]:
    """A Markdown table for each view whose numbers `values` holds (`<prefix><name>` keys)."""
    return {
        view: metrics_table(values, prefix, bold=view.primary, names=view.metric_names)
        for view in VIEWS
        if all(prefix + name in values for name in view.metric_names)
    }
