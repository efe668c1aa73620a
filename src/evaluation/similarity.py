"""The ten numbers of sentence-transformers' EmbeddingSimilarityEvaluator, as a torchmetrics Metric.

State is the full set of (embedding pair, target) scores, so the correlations are computed over
the whole split, gathered across ranks under DDP. Each sample carries its dataset index and
duplicates (the padding a DistributedSampler adds to even out ranks) are dropped before computing.

The correlations are computed here in float64 rather than with torchmetrics' functions: its
Spearman (1.9) sums tied ranks in int32, which overflows past about 88,000 pairs with NLI's three
target values, and returns 0.0 on a constant input. Here ties get their average rank (scipy's
`rankdata`, what sentence-transformers' evaluator uses) and a constant input gives NaN, as in
scipy: a collapsed model must not look like "no correlation".
"""
import torch
from torchmetrics import Metric

from src.evaluation.state import cat_state, one_row_per_key

SIMILARITY_FUNCTIONS = ("cosine", "manhattan", "euclidean", "dot")
METRIC_NAMES = tuple(
    f"{stat}_{fn}" for fn in (*SIMILARITY_FUNCTIONS, "max") for stat in ("pearson", "spearman")
)


def pair_similarities(emb_a: torch.Tensor, emb_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four similarity scores of each pair; distances are negated so higher means closer."""
    emb_a, emb_b = emb_a.double(), emb_b.double()
    return {
        "cosine": torch.nn.functional.cosine_similarity(emb_a, emb_b, dim=-1),
        "manhattan": -(emb_a - emb_b).abs().sum(dim=-1),
        "euclidean": -(emb_a - emb_b).pow(2).sum(dim=-1).sqrt(),
        "dot": (emb_a * emb_b).sum(dim=-1),
    }


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks in float64, tied values sharing the mean of their ranks (scipy's `average`)."""
    sorted_values, order = torch.sort(values)
    starts_group = torch.ones_like(sorted_values, dtype=torch.bool)
    starts_group[1:] = sorted_values[1:] != sorted_values[:-1]
    group = torch.cumsum(starts_group, dim=0) - 1
    last = torch.cumsum(torch.bincount(group), dim=0).double()  # 1-based rank of each group's last value
    first = last - torch.bincount(group).double() + 1
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = ((first + last) / 2)[group]
    return ranks


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson's r in float64; NaN when either side is constant (no correlation is defined)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = torch.sqrt((x * x).sum() * (y * y).sum())
    if denominator == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=x.device)
    return ((x * y).sum() / denominator).clamp(-1.0, 1.0)


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman's rho: Pearson's r of the average-tie ranks (exact at any size, NaN when constant)."""
    return pearson(average_ranks(x), average_ranks(y))


def nan_safe_max(values: torch.Tensor) -> torch.Tensor:
    """The largest non-NaN value; NaN only when all are NaN (a NaN must never win a max)."""
    finite = values[~torch.isnan(values)]
    return finite.max() if finite.numel() else values[0]


class EmbeddingSimilarityMetrics(Metric):
    """Pearson and Spearman of cosine, manhattan, euclidean and dot similarity against the targets,
    plus the max of the four for each statistic."""

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        for name in (*SIMILARITY_FUNCTIONS, "target", "index"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, emb_a: torch.Tensor, emb_b: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> None:
        for name, scores in pair_similarities(emb_a.detach(), emb_b.detach()).items():
            getattr(self, name).append(scores)
        self.target.append(target.detach().double())
        self.index.append(index.detach().long())

    def compute(self) -> dict[str, torch.Tensor]:
        index = cat_state(self.index)
        # keep the first occurrence of each dataset index, in index order
        first = one_row_per_key(index, torch.arange(index.numel(), device=index.device))
        target = cat_state(self.target)[first]
        results: dict[str, torch.Tensor] = {}
        for fn in SIMILARITY_FUNCTIONS:
            scores = cat_state(getattr(self, fn))[first]
            results[f"pearson_{fn}"] = pearson(scores, target)
            results[f"spearman_{fn}"] = spearman(scores, target)
        for stat in ("pearson", "spearman"):
            results[f"{stat}_max"] = nan_safe_max(torch.stack([results[f"{stat}_{fn}"] for fn in SIMILARITY_FUNCTIONS]))
        return {name: results[name].float() for name in METRIC_NAMES}


def metrics_table(
    values: dict[str, float], prefix: str = "", bold: str = "spearman_max", names: tuple[str, ...] = METRIC_NAMES
) -> str:
    """The metrics `names` (the ten by default; `<prefix><name>` keys of `values`) as a Markdown
    table, `bold` in bold."""
    rows = ["| Metric | Value |", "|:--|:--|"]
    for name in names:
        value = f"{values[prefix + name]:.4f}"
        rows.append(f"| **{name}** | **{value}** |" if name == bold else f"| {name} | {value} |")
    return "\n".join(rows)
