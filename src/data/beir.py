"""BEIR-format retrieval folders, the format of most retrieval benchmarks, as test data for the
retrieval view: `python -m src.evaluate model=<model> data=beir data.path=<folder>`.

A folder holds `corpus.jsonl` (`_id`, `text`, optional `title`), `queries.jsonl` (`_id`, `text`)
and `qrels/<split>.tsv` (`query-id`, `corpus-id`, `score`, with a header row). As in
sentence-transformers' `InformationRetrievalEvaluator`, relevance is binary (a qrels score above
0), the queries are those with a relevant document, a document's text is its title and text
joined by a space, and tied scores rank by ascending corpus id.
"""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import torch
from torch.utils.data import DataLoader

from src.data.batching import PairBatchSampler, PairCollator
from src.data.columns import input_ids_key
from src.data.files import iter_rows
from src.data.tokenized import TokenizedPairs
from src.encoder import load_tokenizer
from src.errors import UserInputError
from src.schema import NonNegativeInt, PositiveInt

log = logging.getLogger(__name__)

QRELS_COLUMNS = ("query-id", "corpus-id", "score")


@dataclass
class RetrievalSplit:
    """A folder's test data with integer ids: queries numbered in `queries.jsonl` order (those with
    a relevant document only), documents in ascending corpus id order (the evaluator's tie order)."""

    queries: list[str]
    documents: list[str]
    relevant: list[list[int]]  # per query, the ids of its relevant documents


def _required(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise UserInputError(
            f"data.path: {folder} has no {name} (a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv)"
        )
    return path


def _field(path: Path, row: int, record: dict[str, Any], name: str) -> Any:
    if name not in record:
        raise UserInputError(f"{path}: row {row}: no field {name!r} (fields: {', '.join(map(str, record))})")
    return record[name]


def _texts_by_id(path: Path, title: bool) -> dict[str, str]:
    """`_id` -> text of a corpus or queries file; a corpus text is its title and text."""
    texts: dict[str, str] = {}
    rows: dict[str, int] = {}
    for row, record in iter_rows(path):
        key = str(_field(path, row, record, "_id"))
        text = str(_field(path, row, record, "text"))
        if key in rows:
            raise UserInputError(f"{path}: row {row}: _id {key!r} is already the _id of row {rows[key]}")
        rows[key] = row
        texts[key] = f"{record.get('title') or ''} {text}".strip() if title else text
    if not texts:
        raise UserInputError(f"{path}: no rows")
    return texts


def read_beir(folder: Path, split: str = "test") -> RetrievalSplit:
    """Read and check a BEIR folder; every problem is one line naming the file, row and column."""
    if not folder.is_dir():
        raise UserInputError(f"data.path: no folder {folder}")
    corpus_path = _required(folder, "corpus.jsonl")
    queries_path = _required(folder, "queries.jsonl")
    qrels_path = _required(folder, f"qrels/{split}.tsv")
    corpus = _texts_by_id(corpus_path, title=True)
    queries = _texts_by_id(queries_path, title=False)
    relevant: dict[str, set[str]] = {}
    for row, record in iter_rows(qrels_path):
        query, document, score = (_field(qrels_path, row, record, column) for column in QRELS_COLUMNS)
        for column, key, known, source in (
            ("query-id", query, queries, queries_path.name),
            ("corpus-id", document, corpus, corpus_path.name),
        ):
            if key not in known:
                raise UserInputError(f"{qrels_path}: row {row}: column {column!r}: {key!r} is not an _id of {source}")
        try:
            is_relevant = float(score) > 0
        except ValueError:
            raise UserInputError(f"{qrels_path}: row {row}: column 'score': {score!r} is not a number") from None
        if is_relevant:
            relevant.setdefault(query, set()).add(document)
    if not relevant:
        raise UserInputError(f"{qrels_path}: no row has a score above 0, so no query has a relevant document")
    document_ids = sorted(corpus)
    position = {key: i for i, key in enumerate(document_ids)}
    asked = [key for key in queries if key in relevant]
    log.info(
        "%s: %d queries with a relevant document (of %d), %d documents, %d relevant pairs",
        folder, len(asked), len(queries), len(corpus), sum(map(len, relevant.values())),
    )
    return RetrievalSplit(
        queries=[queries[key] for key in asked],
        documents=[corpus[key] for key in document_ids],
        relevant=[sorted(position[d] for d in relevant[key]) for key in asked],
    )


class RetrievalCollator(PairCollator):
    """Batches of a retrieval split's rows, each a query (column a) or a document (column b): the
    padded texts of each column plus the retrieval view's ids, rows and relevant pairs."""

    def __call__(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        batch = super().__call__(rows)
        query_id, document_id = torch.tensor(rows["query_id"]), torch.tensor(rows["document_id"])
        is_query = query_id >= 0
        relevant = [(q, d) for q, documents in zip(rows["query_id"], rows["relevant"]) for d in documents]
        batch.update(
            query_id=query_id[is_query],
            query_row=batch["index"][is_query],
            document_id=document_id[~is_query],
            document_row=batch["index"][~is_query],
            relevant=torch.tensor(relevant, dtype=torch.long).reshape(-1, 2),
        )
        return batch


class BeirDataModule(L.LightningDataModule):
    """A BEIR folder as a test split for the retrieval view (no training, no scored pairs)."""

    def __init__(
        self,
        path: str | None,
        tokenizer: str,
        max_seq_length: PositiveInt,
        split: str = "test",
        eval_batch_size: PositiveInt = 64,
        num_workers: NonNegativeInt = 0,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if not path:
            raise UserInputError("data.path: not set; name the BEIR folder to score (data.path=<folder>)")
        self.path = Path(path).expanduser()
        self.tokenizer_name = tokenizer
        self.max_seq_length = max_seq_length
        self.split = split
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.trust_remote_code = trust_remote_code
        self.rows: datasets.Dataset | None = None
        self.pad_token_id: int | None = None

    def has_split(self, split: str) -> bool:
        return split == "test"

    def setup(self, stage: str | None = None) -> None:
        if self.rows is not None:
            return
        retrieval = read_beir(self.path, self.split)
        tokenizer = load_tokenizer(self.tokenizer_name, self.max_seq_length, self.trust_remote_code)
        self.pad_token_id = tokenizer.pad_token_id
        queries = tokenizer(retrieval.queries, truncation=True)["input_ids"]
        documents = tokenizer(retrieval.documents, truncation=True)["input_ids"]
        n_queries, n_documents = len(queries), len(documents)
        # queries first, then documents; a row's other text column is empty (left out by the collator)
        self.rows = datasets.Dataset.from_dict({
            input_ids_key("a"): queries + [[]] * n_documents,
            input_ids_key("b"): [[]] * n_queries + documents,
            "query_id": list(range(n_queries)) + [-1] * n_documents,
            "document_id": [-1] * n_queries + list(range(n_documents)),
            "relevant": retrieval.relevant + [[]] * n_documents,
            "max_length": [len(ids) for ids in queries + documents],
        })

    def test_dataloader(self) -> DataLoader:
        rows = TokenizedPairs(self.rows, extra_columns=("query_id", "document_id", "relevant"))
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = PairBatchSampler(
            rows.lengths, batch_size=self.eval_batch_size, shuffle=False, num_replicas=world_size, rank=rank,
            even_ranks=False,
        )
        return DataLoader(
            rows, batch_sampler=sampler, collate_fn=RetrievalCollator(self.pad_token_id), num_workers=self.num_workers
        )
