"""The classification view as a torchmetrics Metric: how well the cosine of a pair alone tells
positive pairs (entailment) from negative ones (contradiction), as sentence-transformers'
`BinaryClassificationEvaluator` measures it with cosine similarity: average precision, and
accuracy and F1 at their best thresholds.

Each pair carries its dataset index; a pair scored twice (a sample repeated to give every DDP
rank a batch) counts once. Pairs with another label (neutral) are left out.
"""
import torch
import torch.nn.functional as F
from torchmetrics import Metric

from src.evaluation.state import cat_state, one_row_per_key

CLASSIFICATION_METRIC_NAMES = ("classification_ap", "classification_accuracy", "classification_f1")
POSITIVE, NEGATIVE, NEITHER = 1, 0, -1  # a pair's binary label


def pair_cosines(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """Cosine of each pair as sentence-transformers' `pairwise_cos_sim` computes it (normalized
    embeddings, then their dot product): the same float32 values, so the same ties and order."""
    return (F.normalize(emb_a.float(), dim=-1) * F.normalize(emb_b.float(), dim=-1)).sum(dim=-1)


def classification_scores(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Average precision, best accuracy and best F1 of ranking pairs by `scores` (higher: more
    likely positive) against `labels` (1 positive, 0 negative).

    All three come from one pass down the scores: at each distinct score, the pairs at or above
    it are called positive. Average precision is scikit-learn's (what the evaluator calls), in
    float64; the best accuracy also considers calling every pair negative, as the evaluator does.
    """
    labels = labels.double()
    positives, total = labels.sum(), torch.tensor(float(len(labels)), dtype=torch.float64, device=labels.device)
    if positives == 0 or positives == total:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=labels.device)
        return {name: nan for name in CLASSIFICATION_METRIC_NAMES}
    sorted_scores, order = scores.sort(descending=True)
    # the last pair of each run of tied scores: a threshold falls between distinct scores only
    run_ends = torch.ones_like(sorted_scores, dtype=torch.bool)
    run_ends[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    true_positives = labels[order].cumsum(0)[run_ends]
    called_positive = torch.arange(1, len(labels) + 1, dtype=torch.float64, device=labels.device)[run_ends]
    false_positives = called_positive - true_positives
    precision = true_positives / called_positive
    recall_gain = torch.diff(true_positives, prepend=true_positives.new_zeros(1)) / positives
    accuracy = (true_positives + (total - positives - false_positives)) / total
    all_negative = (total - positives) / total
    return {
        "classification_ap": (recall_gain * precision).sum(),
        "classification_accuracy": torch.maximum(accuracy.max(), all_negative),
        "classification_f1": (2 * true_positives / (called_positive + positives)).max(),
    }


class PairClassificationMetrics(Metric):
    """Average precision, accuracy and F1 of positive vs negative pairs by cosine, over the whole
    split, gathered across ranks; equal to `BinaryClassificationEvaluator`'s `cosine_ap`,
    `cosine_accuracy` and `cosine_f1` on the same pairs."""

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        for name in ("cosine", "label", "index"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, emb_a: torch.Tensor, emb_b: torch.Tensor, label: torch.Tensor, index: torch.Tensor) -> None:
        """Pairs of embeddings `[n, dim]`, their binary labels (`POSITIVE`, `NEGATIVE`, or `NEITHER`:
        left out) and dataset indices."""
        kept = label != NEITHER
        self.cosine.append(pair_cosines(emb_a.detach()[kept], emb_b.detach()[kept]))
        self.label.append(label[kept].long())
        self.index.append(index[kept].long())

    def compute(self) -> dict[str, torch.Tensor]:
        index = cat_state(self.index)
        keep = one_row_per_key(index, index)
        return classification_scores(cat_state(self.cosine)[keep], cat_state(self.label)[keep])
