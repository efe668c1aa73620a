"""BEIR folders: read as sentence-transformers' evaluator is fed them, and
`python -m src.evaluate data=beir` reports its numbers."""
import csv
import json
import subprocess
import sys

import pytest

from src.config import PROJECT_ROOT
from src.data.beir import read_beir
from src.evaluation.retrieval import RECALL_AT, RETRIEVAL_METRIC_NAMES
from tests.helpers import write_beir_folder


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_documents_are_numbered_in_corpus_id_order_and_only_queries_with_a_relevant_one_count(tmp_path):
    corpus = [{"_id": "doc2", "text": "b"}, {"_id": "doc10", "title": "T", "text": "a"}, {"_id": 1, "text": "c"}]
    write(tmp_path / "corpus.jsonl", "".join(json.dumps(r) + "\n" for r in corpus))
    write(tmp_path / "queries.jsonl", "".join(json.dumps({"_id": q, "text": q.upper()}) + "\n" for q in ("qa", "qb", "qc")))
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nqc\tdoc2\t2\nqc\tdoc10\t1\nqa\t1\t0\n")
    split = read_beir(tmp_path)
    # string order, as the evaluator breaks ties: "1" < "doc10" < "doc2"; a title joins its text
    assert split.documents == ["c", "T a", "b"]
    # qa has only a score of 0 and qb no judgement: neither is a query
    assert split.queries == ["QC"] and split.relevant == [[1, 2]]


def test_evaluate_on_a_beir_folder_equals_information_retrieval_evaluator(tmp_path, tiny_bert):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    folder = write_beir_folder(tmp_path / "beir")
    result = subprocess.run(
        [sys.executable, "-m", "src.evaluate", f"model={tiny_bert}", "data=beir", f"data.path={folder}",
         f"hydra.run.dir={tmp_path / 'eval'}", "trainer.enable_progress_bar=false"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(ours) == {f"test/{name}" for name in RETRIEVAL_METRIC_NAMES}
    assert f"| **retrieval_ndcg@10** | **{ours['test/retrieval_ndcg@10']:.4f}** |" in result.stdout

    # the evaluator fed the folder as its docstring's BEIR example reads one
    def records(name: str) -> list[dict]:
        return [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines()]

    corpus = {r["_id"]: (r.get("title", "") + " " + r["text"]).strip() for r in records("corpus.jsonl")}
    queries = {r["_id"]: r["text"] for r in records("queries.jsonl")}
    relevant: dict[str, set[str]] = {}
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if int(row["score"]) > 0:
                relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    evaluator = InformationRetrievalEvaluator(
        queries, corpus, relevant, accuracy_at_k=[1], precision_recall_at_k=list(RECALL_AT), batch_size=64,
    )
    theirs = evaluator(SentenceTransformer(str(tiny_bert), device="cpu"))
    for name in RETRIEVAL_METRIC_NAMES:
        assert ours[f"test/{name}"] == pytest.approx(theirs["cosine_" + name.removeprefix("retrieval_")], abs=1e-6), name
    assert ours["test/retrieval_recall@10"] > 0.03  # not all-zero by accident: chance is 10 of 380 documents
