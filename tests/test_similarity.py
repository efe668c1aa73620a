import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

from src.evaluation.similarity import (
    METRIC_NAMES,
    EmbeddingSimilarityMetrics,
    average_ranks,
    nan_safe_max,
    pearson,
    spearman,
)
from tests.helpers import FrozenEmbeddings


def _evaluator_metrics(emb_a: torch.Tensor, emb_b: torch.Tensor, scores: torch.Tensor) -> dict[str, float]:
    """sentence-transformers' evaluator, fed the given embeddings instead of a model's."""
    s1 = [f"a{i}" for i in range(len(scores))]
    s2 = [f"b{i}" for i in range(len(scores))]
    model = FrozenEmbeddings({**dict(zip(s1, emb_a)), **dict(zip(s2, emb_b))})
    evaluator = EmbeddingSimilarityEvaluator(
        s1, s2, scores.tolist(), similarity_fn_names=["cosine", "manhattan", "euclidean", "dot"]
    )
    return evaluator(model)


@pytest.mark.parametrize("discrete", [False, True])
def test_ten_metrics_equal_sentence_transformers_evaluator(discrete):
    torch.manual_seed(1)
    n = 300
    emb_a, emb_b = torch.randn(n, 24), torch.randn(n, 24)
    emb_b[: n // 2] += emb_a[: n // 2]  # make some pairs similar so correlations are not ~0
    scores = torch.randint(0, 3, (n,)).float() / 2 if discrete else torch.rand(n)
    scores[: n // 2] += 0.5

    metric = EmbeddingSimilarityMetrics()
    for chunk in torch.arange(n).split(64):  # accumulated over batches, computed once
        metric.update(emb_a[chunk], emb_b[chunk], scores[chunk], chunk)
    ours = {k: float(v) for k, v in metric.compute().items()}
    theirs = _evaluator_metrics(emb_a, emb_b, scores)

    assert set(ours) == set(METRIC_NAMES) and len(ours) == 10
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(float(theirs[name]), abs=1e-5), name
    assert abs(ours["spearman_cosine"]) > 0.1  # the test data is not degenerate


def test_repeated_samples_do_not_change_the_result():
    """DistributedSampler-style padding repeats samples; the metric must ignore the repeats."""
    torch.manual_seed(2)
    emb_a, emb_b, scores = torch.randn(50, 8), torch.randn(50, 8), torch.rand(50)
    index = torch.arange(50)
    clean = EmbeddingSimilarityMetrics()
    clean.update(emb_a, emb_b, scores, index)
    padded = EmbeddingSimilarityMetrics()
    padded.update(emb_a[25:], emb_b[25:], scores[25:], index[25:])
    padded.update(emb_a, emb_b, scores, index)
    padded.update(emb_a[:3], emb_b[:3], scores[:3], index[:3])
    a, b = clean.compute(), padded.compute()
    for name in METRIC_NAMES:
        assert float(a[name]) == pytest.approx(float(b[name]), abs=1e-7)
    # and the check can fail: dropping samples does change it
    partial = EmbeddingSimilarityMetrics()
    partial.update(emb_a[:40], emb_b[:40], scores[:40], index[:40])
    assert not np.isclose(float(partial.compute()["spearman_cosine"]), float(a["spearman_cosine"]))


def test_correlations_equal_scipy_at_200000_pairs_with_ties():
    """torchmetrics 1.9 sums tied ranks in int32: past ~88,000 pairs of 3-valued targets its Spearman
    overflowed (-0.146 where scipy gives 0.662 at 120,000 pairs)."""
    from scipy.stats import pearsonr, spearmanr

    generator = torch.Generator().manual_seed(3)
    n = 200_000
    target = torch.randint(0, 3, (n,), generator=generator).double() / 2  # NLI-style: 3 values, many ties
    scores = target + torch.randn(n, generator=generator, dtype=torch.float64)
    scores = (scores * 20).round() / 20  # ties on the score side too
    assert spearman(scores, target).item() == pytest.approx(spearmanr(scores, target).statistic, abs=1e-9)
    assert pearson(scores, target).item() == pytest.approx(pearsonr(scores, target).statistic, abs=1e-9)
    # and through the metric, as validation computes it
    emb_a = torch.randn(n, 4, generator=generator)
    emb_b = emb_a + 2 * torch.randn(n, 4, generator=generator)
    metric = EmbeddingSimilarityMetrics()
    metric.update(emb_a, emb_b, target, torch.arange(n))
    cosine = torch.nn.functional.cosine_similarity(emb_a.double(), emb_b.double(), dim=-1)
    assert metric.compute()["spearman_cosine"].item() == pytest.approx(spearmanr(cosine, target).statistic, abs=1e-6)
    ranks = average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0]))
    assert ranks.tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_a_constant_input_gives_nan_and_nan_never_wins_the_max():
    n = 64
    collapsed = EmbeddingSimilarityMetrics()  # a collapsed model: every sentence gets the same embedding
    collapsed.update(torch.ones(n, 8), torch.ones(n, 8), torch.rand(n), torch.arange(n))
    values = collapsed.compute()
    assert all(torch.isnan(values[name]) for name in METRIC_NAMES)  # scipy's answer, not torchmetrics' 0.0
    assert torch.isnan(spearman(torch.arange(5.0), torch.ones(5)))
    # one similarity function undefined: the max is taken over the others
    assert nan_safe_max(torch.tensor([float("nan"), 0.2, 0.5], dtype=torch.float64)).item() == 0.5
