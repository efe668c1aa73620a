"""The retrieval view as a torchmetrics Metric: each query's cosine nearest neighbours among all
documents, scored as sentence-transformers' `InformationRetrievalEvaluator` scores them (binary
relevance): nDCG@10, MRR@10, Recall@1/5/10 and MAP@100.

Queries and documents arrive in batches, each with an integer id and the dataset row it came
from; relevance arrives as (query id, document id) pairs. The same text may arrive more than once
(a premise with several hypotheses, a sample repeated to give every DDP rank a batch): one copy
per id is kept, the one from the lowest row. The queries are those with at least one relevant
document; the corpus is every document. Rankings are the evaluator's: by cosine, ties broken by
ascending document id. Scores are computed a block of queries against a block of documents at a
time, keeping only each query's best `RANK_DEPTH`, so memory is bounded by the block sizes, not by
queries x documents.
"""
import torch
import torch.nn.functional as F
from torchmetrics import Metric

from src.evaluation.state import cat_state, one_row_per_key

NDCG_AT = 10
MRR_AT = 10
RECALL_AT = (1, 5, 10)
MAP_AT = 100
RANK_DEPTH = max(NDCG_AT, MRR_AT, *RECALL_AT, MAP_AT)  # how many documents are ranked per query
RETRIEVAL_METRIC_NAMES = (
    f"retrieval_ndcg@{NDCG_AT}",
    f"retrieval_mrr@{MRR_AT}",
    *(f"retrieval_recall@{k}" for k in RECALL_AT),
    f"retrieval_map@{MAP_AT}",
)


def ranked_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` best scores of each row and their columns, by score descending, ties by column ascending."""
    values, columns = scores.topk(k, dim=1)
    # topk picks arbitrarily among scores tied with the k-th; rows where it had to leave some of
    # them out are sorted in full (a stable sort keeps tied columns in ascending order)
    kth = values[:, -1:]
    cut_ties = (scores == kth).sum(dim=1) > (values == kth).sum(dim=1)
    if cut_ties.any():
        full_values, full_columns = scores[cut_ties].sort(dim=1, descending=True, stable=True)
        values[cut_ties], columns[cut_ties] = full_values[:, :k], full_columns[:, :k]
    # ties inside the k: order by column, then stably by score
    by_column = columns.argsort(dim=1)
    values, columns = values.gather(1, by_column), columns.gather(1, by_column)
    by_score = values.argsort(dim=1, descending=True, stable=True)
    return values.gather(1, by_score), columns.gather(1, by_score)


def retrieval_scores(hits: torch.Tensor, relevant_counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The evaluator's numbers, averaged over queries.

    `hits[q, r]`: whether the document ranked r-th (from 0) for query q is relevant to it, over the
    ranked depth; `relevant_counts[q]`: how many documents are relevant to q (at least one).
    """
    hits, relevant_counts = hits.double(), relevant_counts.double()
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64, device=hits.device)
    discounts = 1 / torch.log2(torch.arange(2, NDCG_AT + 2, dtype=torch.float64, device=hits.device))
    top = hits[:, :NDCG_AT]
    dcg = (top * discounts[: top.shape[1]]).sum(dim=1)
    # the ideal ranking puts every relevant document first
    ideal_dcg = discounts.cumsum(0)[relevant_counts.clamp(max=NDCG_AT).long() - 1]
    top = hits[:, :MRR_AT]
    first_hit = top.argmax(dim=1)  # the first relevant rank, where there is one
    reciprocal_rank = torch.where(top.any(dim=1), 1 / (first_hit + 1).double(), 0.0)
    precision_at_hits = hits * hits.cumsum(dim=1) / ranks
    average_precision = precision_at_hits[:, :MAP_AT].sum(dim=1) / relevant_counts.clamp(max=MAP_AT)
    scores = {
        f"retrieval_ndcg@{NDCG_AT}": dcg / ideal_dcg,
        f"retrieval_mrr@{MRR_AT}": reciprocal_rank,
        **{f"retrieval_recall@{k}": hits[:, :k].sum(dim=1) / relevant_counts for k in RECALL_AT},
        f"retrieval_map@{MAP_AT}": average_precision,
    }
    return {name: scores[name].mean() for name in RETRIEVAL_METRIC_NAMES}


def _positions(ids: torch.Tensor, sorted_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each of `ids` is in `sorted_ids`, and whether it is there at all."""
    if len(sorted_ids) == 0:
        return torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    positions = torch.searchsorted(sorted_ids, ids.contiguous()).clamp(max=len(sorted_ids) - 1)
    return positions, sorted_ids[positions] == ids


class RetrievalMetrics(Metric):
    """nDCG@10, MRR@10, Recall@1/5/10 and MAP@100 of cosine retrieval over the whole split,
    gathered across ranks; equal to `InformationRetrievalEvaluator` with the same queries, corpus
    (document ids as corpus ids) and relevant documents."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, query_block: int = 1024, document_block: int = 16384) -> None:
        super().__init__()
        self.query_block = query_block
        self.document_block = document_block
        for name in ("queries", "query_ids", "query_rows", "documents", "document_ids", "document_rows", "relevant"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        queries: torch.Tensor,
        query_ids: torch.Tensor,
        query_rows: torch.Tensor,
        documents: torch.Tensor,
        document_ids: torch.Tensor,
        document_rows: torch.Tensor,
        relevant: torch.Tensor,
    ) -> None:
        """Embeddings `[n, dim]` of queries and documents (either may be empty) with their ids and
        dataset rows, and `relevant`: `[m, 2]` (query id, document id) pairs."""
        self.queries.append(queries.detach().float())
        self.query_ids.append(query_ids.long())
        self.query_rows.append(query_rows.long())
        self.documents.append(documents.detach().float())
        self.document_ids.append(document_ids.long())
        self.document_rows.append(document_rows.long())
        self.relevant.append(relevant.long().reshape(-1, 2))

    def compute(self) -> dict[str, torch.Tensor]:
        query_ids, queries = self._distinct(self.query_ids, self.query_rows, self.queries)
        # in ascending id order: the evaluator's order among tied scores
        document_ids, documents = self._distinct(self.document_ids, self.document_rows, self.documents)
        relevant = torch.unique(cat_state(self.relevant), dim=0)
        query_positions, known_query = _positions(relevant[:, 0], query_ids)
        relevant, query_positions = relevant[known_query], query_positions[known_query]
        relevant_counts = torch.bincount(query_positions, minlength=len(query_ids))
        asked = relevant_counts.nonzero().squeeze(1)
        if len(asked) == 0 or len(documents) == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
            return {name: nan for name in RETRIEVAL_METRIC_NAMES}
        # a relevant document outside the corpus counts in the recall denominators, as in the
        # evaluator, but is never retrieved
        document_positions, in_corpus = _positions(relevant[:, 1], document_ids)
        relevant_keys = query_positions[in_corpus] * len(document_ids) + document_positions[in_corpus]
        ranked = self._rank(queries[asked], documents)
        hits = torch.isin(asked[:, None] * len(document_ids) + ranked, relevant_keys)
        return retrieval_scores(hits, relevant_counts[asked])

    @staticmethod
    def _distinct(
        ids: list[torch.Tensor], rows: list[torch.Tensor], embeddings: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, embeddings), one per id in ascending id order: the copy from the lowest dataset row."""
        ids = cat_state(ids)
        keep = one_row_per_key(ids, cat_state(rows))
        return ids[keep], cat_state(embeddings)[keep]

    def _rank(self, queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        """Positions in `documents` of each query's best `RANK_DEPTH` documents, best first."""
        depth = min(RANK_DEPTH, len(documents))
        # what sentence-transformers' cos_sim computes: normalized, then one matrix product (fp32)
        queries, documents = F.normalize(queries, dim=-1), F.normalize(documents, dim=-1)
        ranked = []
        for query_block in queries.split(self.query_block):
            best_scores = query_block.new_empty(len(query_block), 0)
            best = torch.empty(len(query_block), 0, dtype=torch.long, device=queries.device)
            for start in range(0, len(documents), self.document_block):
                scores = query_block @ documents[start : start + self.document_block].T
                values, columns = ranked_top_k(scores, min(depth, scores.shape[1]))
                # earlier blocks hold lower document positions: a stable sort keeps them first among ties
                best_scores = torch.cat([best_scores, values], dim=1)
                best = torch.cat([best, columns + start], dim=1)
                order = best_scores.argsort(dim=1, descending=True, stable=True)[:, :depth]
                best_scores, best = best_scores.gather(1, order), best.gather(1, order)
            ranked.append(best)
        return torch.cat(ranked)

