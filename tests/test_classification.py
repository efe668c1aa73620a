"""The classification view's metric: equal to sentence-transformers' BinaryClassificationEvaluator
(cosine) on the same pairs, with real embeddings and with ties; repeated pairs count once."""
import pytest
import torch
from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator

from src.data.files import SIMILARITY_LABELS, PairColumns, read_pairs
from src.evaluation.classification import (
    CLASSIFICATION_METRIC_NAMES,
    NEGATIVE,
    NEITHER,
    POSITIVE,
    PairClassificationMetrics,
)
from src.model import SentenceEmbeddingModel
from tests.helpers import DEMO_PAIRS, FrozenEmbeddings


def ours(emb_a, emb_b, labels, order=None, batch_size=64) -> dict[str, float]:
    """Our metric fed the pairs in batches (`order` may shuffle and repeat them)."""
    metric = PairClassificationMetrics()
    order = torch.arange(len(labels)) if order is None else order
    for rows in order.split(batch_size):
        metric.update(emb_a[rows], emb_b[rows], labels[rows], rows)
    return {name: float(value) for name, value in metric.compute().items()}


def theirs(emb_a, emb_b, labels) -> dict[str, float]:
    """BinaryClassificationEvaluator with cosine on the positive and negative pairs."""
    kept = [i for i, label in enumerate(labels.tolist()) if label != NEITHER]
    lookup = {f"a{i}": emb_a[i] for i in kept} | {f"b{i}": emb_b[i] for i in kept}
    evaluator = BinaryClassificationEvaluator(
        [f"a{i}" for i in kept], [f"b{i}" for i in kept], [int(labels[i]) for i in kept],
        similarity_fn_names=["cosine"], write_csv=False,
    )
    results = evaluator(FrozenEmbeddings(lookup))
    return {name: results["cosine_" + name.removeprefix("classification_")] for name in CLASSIFICATION_METRIC_NAMES}


def assert_equal(a: dict[str, float], b: dict[str, float]) -> None:
    assert set(a) == set(b) == set(CLASSIFICATION_METRIC_NAMES)
    for name in CLASSIFICATION_METRIC_NAMES:
        assert a[name] == pytest.approx(b[name], abs=1e-6), name


@pytest.fixture(scope="module")
def demo_pairs(tiny_bert):
    """The demo file's pairs with the tiny BERT's real embeddings; entailment positive,
    contradiction negative, neutral neither."""
    table = read_pairs(DEMO_PAIRS, PairColumns(), SIMILARITY_LABELS)
    model = SentenceEmbeddingModel(str(tiny_bert), max_seq_length=64)
    roles = {"entailment": POSITIVE, "contradiction": NEGATIVE, "neutral": NEITHER}
    return model.encoder.encode(table.sentence1), model.encoder.encode(table.sentence2), torch.tensor([roles[x] for x in table.label])


def test_equals_binary_classification_evaluator_on_real_embeddings(demo_pairs):
    result = ours(*demo_pairs)
    assert_equal(result, theirs(*demo_pairs))
    assert 0 < result["classification_ap"] < 1 and result["classification_accuracy"] >= 0.5


def test_equals_the_evaluator_with_tied_cosines():
    """Embeddings of small integers in 2 dimensions: few distinct cosines, each shared by many pairs
    of both labels; the zero vector has cosine 0 with everything."""
    generator = torch.Generator().manual_seed(0)
    emb_a = torch.randint(0, 3, (500, 2), generator=generator).float()
    emb_b = torch.randint(0, 3, (500, 2), generator=generator).float()
    labels = torch.randint(-1, 2, (500,), generator=generator)
    assert_equal(ours(emb_a, emb_b, labels), theirs(emb_a, emb_b, labels))
    assert len(torch.nn.functional.cosine_similarity(emb_a, emb_b).unique()) < 20


def test_repeated_pairs_count_once(demo_pairs):
    n = len(demo_pairs[2])
    order = torch.cat([torch.randperm(n, generator=torch.Generator().manual_seed(1)), torch.arange(7)])
    assert ours(*demo_pairs, order=order, batch_size=29) == pytest.approx(ours(*demo_pairs), abs=1e-12)
    assert ours(*demo_pairs, order=torch.arange(n - 100)) != pytest.approx(ours(*demo_pairs), abs=1e-6)


def test_one_class_only_gives_nan():
    result = ours(torch.eye(3), torch.eye(3), torch.tensor([POSITIVE, POSITIVE, NEITHER]))
    assert all(value != value for value in result.values())
