from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

from src.metrics import METRIC_NAMES, EmbeddingSimilarityMetrics


class FrozenEmbeddings:
    """Stands in for a SentenceTransformer whose `encode` returns fixed embeddings."""

    def __init__(self, lookup: dict[str, torch.Tensor]) -> None:
        self.lookup = lookup
        self.model_card_data = SimpleNamespace(set_evaluation_metrics=lambda *args: None)

    def encode(self, sentences: list[str], **kwargs) -> np.ndarray:
        return torch.stack([self.lookup[s] for s in sentences]).numpy()


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
