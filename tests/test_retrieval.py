"""The retrieval view's metric: equal to sentence-transformers' InformationRetrievalEvaluator on the
same queries, corpus and relevance (real embeddings, ties, block boundaries), one copy per text,
bounded memory."""
import pytest
import torch
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

import src.evaluation.retrieval
from src.data.files import SIMILARITY_LABELS, PairColumns, read_pairs
from src.data.tokenized import distinct_text_ids
from src.evaluation.retrieval import RECALL_AT, RETRIEVAL_METRIC_NAMES, RetrievalMetrics
from src.model import SentenceEmbeddingModel
from tests.helpers import DEMO_PAIRS, FrozenEmbeddings


def ours(queries, query_ids, documents, document_ids, positive, order=None, batch_size=64, **blocks) -> dict[str, float]:
    """Our metric fed pair rows in batches, as a pair split's evaluation batches feed it: row i is
    (query i, document i), relevant where `positive`. `order` may shuffle and repeat rows."""
    metric = RetrievalMetrics(**blocks)
    order = torch.arange(len(positive)) if order is None else order
    for rows in order.split(batch_size):
        relevant = torch.stack([query_ids[rows][positive[rows]], document_ids[rows][positive[rows]]], dim=1)
        metric.update(queries[rows], query_ids[rows], rows, documents[rows], document_ids[rows], rows, relevant)
    return {name: float(value) for name, value in metric.compute().items()}


def theirs(queries, query_ids, documents, document_ids, positive) -> dict[str, float]:
    """InformationRetrievalEvaluator with the distinct queries and documents (our ids as its ids)."""
    lookup = {f"q{int(i)}": e for i, e in zip(query_ids, queries)} | {f"d{int(i)}": e for i, e in zip(document_ids, documents)}
    relevant: dict[int, set[int]] = {}
    for query, document in zip(query_ids[positive].tolist(), document_ids[positive].tolist()):
        relevant.setdefault(query, set()).add(document)
    evaluator = InformationRetrievalEvaluator(
        queries={int(i): f"q{int(i)}" for i in query_ids},
        corpus={int(i): f"d{int(i)}" for i in document_ids},
        relevant_docs=relevant,
        accuracy_at_k=[1],
        precision_recall_at_k=list(RECALL_AT),
        write_csv=False,
    )
    results = evaluator(FrozenEmbeddings(lookup))
    return {name: results["cosine_" + name.removeprefix("retrieval_")] for name in RETRIEVAL_METRIC_NAMES}


def assert_equal(a: dict[str, float], b: dict[str, float]) -> None:
    assert set(a) == set(b) == set(RETRIEVAL_METRIC_NAMES)
    for name in RETRIEVAL_METRIC_NAMES:
        assert a[name] == pytest.approx(b[name], abs=1e-6), name


@pytest.fixture(scope="module")
def demo_pairs(tiny_bert):
    """The demo file's pairs as a pair split feeds the view, with the tiny BERT's real embeddings.

    Duplicates make ties: 30 more pairs whose hypothesis has the embedding of a premise's entailed
    hypothesis but another id, numbered before the originals, and not relevant."""
    table = read_pairs(DEMO_PAIRS, PairColumns(), SIMILARITY_LABELS)
    model = SentenceEmbeddingModel(str(tiny_bert), max_seq_length=64)
    texts = list(dict.fromkeys(table.sentence1 + table.sentence2))
    embedding = dict(zip(texts, model.encoder.encode(texts)))
    entailed = [i for i, label in enumerate(table.label) if label == "entailment"][:30]
    rows = list(range(len(table.label))) + entailed
    copies = len(entailed)
    document_ids = [i + copies for i in distinct_text_ids(table.sentence2)] + list(range(copies))
    return {
        "queries": torch.stack([embedding[table.sentence1[i]] for i in rows]),
        "query_ids": torch.tensor([distinct_text_ids(table.sentence1)[i] for i in rows]),
        "documents": torch.stack([embedding[table.sentence2[i]] for i in rows]),
        "document_ids": torch.tensor(document_ids),
        "positive": torch.tensor([table.label[i] == "entailment" for i in rows[: len(table.label)]] + [False] * copies),
    }


@pytest.mark.parametrize("blocks", [{}, {"query_block": 16, "document_block": 50}])
def test_equals_information_retrieval_evaluator_on_real_embeddings(demo_pairs, blocks):
    result = ours(**demo_pairs, **blocks)
    assert_equal(result, theirs(**demo_pairs))
    assert result["retrieval_recall@10"] > 0.05  # not degenerate: 10 of 390 documents by chance is 0.026

    # the tied copies matter: numbered after the originals, they rank below them
    later = dict(demo_pairs, document_ids=torch.where(demo_pairs["document_ids"] < 30, demo_pairs["document_ids"] + 10_000,
                                                      demo_pairs["document_ids"]))
    after = ours(**later, **blocks)
    assert_equal(after, theirs(**later))
    assert after["retrieval_mrr@10"] > result["retrieval_mrr@10"]


@pytest.mark.parametrize("blocks", [{}, {"query_block": 7, "document_block": 13}])
def test_ties_break_by_document_id_across_blocks(blocks):
    """Embeddings of small integers in 3 dimensions: many exactly tied cosines, at every cut."""
    generator = torch.Generator().manual_seed(0)
    n_queries, n_documents = 40, 300
    query_ids = torch.arange(n_queries).repeat_interleave(n_documents // n_queries + 1)[:n_documents]
    document_ids = torch.randperm(n_documents, generator=generator)
    queries = torch.randint(0, 3, (n_queries, 3), generator=generator).float()[query_ids]
    documents = torch.randint(0, 3, (n_documents, 3), generator=generator).float()
    positive = torch.rand(n_documents, generator=generator) < 0.3
    pairs = dict(queries=queries, query_ids=query_ids, documents=documents, document_ids=document_ids, positive=positive)
    result = ours(**pairs, **blocks)
    assert_equal(result, theirs(**pairs))
    scores = torch.nn.functional.normalize(queries[:1]) @ torch.nn.functional.normalize(documents).T
    assert len(scores.unique()) < n_documents / 10  # ties everywhere


def test_a_corpus_of_one_document_and_a_query_with_several_relevant():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    documents = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    for document_ids in (torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2])):
        pairs = dict(queries=queries, query_ids=torch.tensor([0, 1, 2]), documents=documents, document_ids=document_ids,
                     positive=torch.tensor([True, True, False]))
        assert_equal(ours(**pairs), theirs(**pairs))


def test_repeated_and_reordered_rows_do_not_change_the_result(demo_pairs):
    """Under DDP the rows arrive rank by rank, some twice: one copy per text is kept."""
    n = len(demo_pairs["positive"])
    order = torch.cat([torch.randperm(n, generator=torch.Generator().manual_seed(1)), torch.arange(5)])
    assert ours(**demo_pairs, order=order, batch_size=37) == pytest.approx(ours(**demo_pairs), abs=1e-12)
    # and the check can fail: leaving rows out changes the numbers
    assert ours(**demo_pairs, order=torch.arange(n - 60)) != pytest.approx(ours(**demo_pairs), abs=1e-6)


def test_no_relevant_pair_gives_nan():
    embeddings = torch.eye(3)
    result = ours(embeddings, torch.arange(3), embeddings, torch.arange(3), torch.zeros(3, dtype=torch.bool))
    assert all(value != value for value in result.values())


def test_a_large_corpus_is_scored_in_blocks(monkeypatch):
    """100,000 documents: no queries x documents matrix, only blocks of the configured size."""
    shapes = []
    ranked_top_k = src.evaluation.retrieval.ranked_top_k
    monkeypatch.setattr(src.evaluation.retrieval, "ranked_top_k", lambda scores, k: shapes.append(scores.shape) or ranked_top_k(scores, k))
    generator = torch.Generator().manual_seed(0)
    n_documents, n_queries = 100_000, 300
    documents = torch.randn(n_documents, 16, generator=generator)
    relevant = torch.randperm(n_documents, generator=generator)[:n_queries]
    metric = RetrievalMetrics(query_block=128, document_block=8192)
    metric.update(documents[relevant], torch.arange(n_queries), torch.arange(n_queries), documents, torch.arange(n_documents),
                  torch.arange(n_documents), torch.stack([torch.arange(n_queries), relevant], dim=1))
    result = metric.compute()
    assert max(rows for rows, _ in shapes) == 128 and max(columns for _, columns in shapes) == 8192
    assert len(shapes) == 3 * 13  # 300 queries in 3 blocks, 100,000 documents in 13
    # every query is a copy of its one relevant document: found first
    assert all(float(value) == pytest.approx(1.0) for value in result.values())
