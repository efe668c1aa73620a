"""Plain helpers the tests share (fixtures are in conftest.py)."""
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from src.config import PROJECT_ROOT

SHARED_HEBNLI = PROJECT_ROOT.parent / "shared" / "data" / "hebnli" / "HebNLI_val.jsonl"
DEMO_PAIRS = PROJECT_ROOT / "data" / "demo" / "hebrew_pairs.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


class FrozenEmbeddings:
    """Stands in for a SentenceTransformer with cosine similarity whose `encode` returns fixed
    embeddings, so sentence-transformers' evaluators score exactly the embeddings ours got."""

    similarity_fn_name = "cosine"

    def __init__(self, lookup: dict[str, torch.Tensor]) -> None:
        self.lookup = lookup
        self.model_card_data = SimpleNamespace(set_evaluation_metrics=lambda *args, **kwargs: None)

    def encode(self, sentences: list[str], convert_to_tensor: bool = False, **kwargs):
        embeddings = torch.stack([self.lookup[s] for s in sentences])
        return embeddings if convert_to_tensor else embeddings.numpy()

    encode_query = encode_document = encode

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from sentence_transformers.util import cos_sim

        return cos_sim(a, b)


def write_beir_folder(folder: Path) -> Path:
    """A small BEIR folder from the demo pairs: the premises are the queries, the hypotheses the
    corpus (every fifth with a title), plus the premises of 20 as distractor documents. qrels:
    entailment 1, every tenth neutral 2 (graded: also relevant), contradiction 0 (not relevant).
    Ids are not zero-padded, so their string order is not their numeric order."""
    rows = [json.loads(line) for line in DEMO_PAIRS.read_text(encoding="utf-8").splitlines()]
    premises = list(dict.fromkeys(r["translation1"] for r in rows))
    hypotheses = list(dict.fromkeys(r["translation2"] for r in rows))
    corpus = [{"_id": f"doc{i}", "title": f"כותרת {i}" if i % 5 == 0 else "", "text": text} for i, text in enumerate(hypotheses)]
    corpus += [{"_id": f"extra{i}", "text": text} for i, text in enumerate(premises[:20])]
    queries = [{"_id": f"q{i}", "text": text} for i, text in enumerate(premises)]
    score = {"entailment": 1, "contradiction": 0}
    qrels = ["query-id\tcorpus-id\tscore"]
    for i, r in enumerate(rows):
        relevance = score.get(r["original_label"], 2 if i % 10 == 0 else None)
        if relevance is not None:
            qrels.append(f"q{premises.index(r['translation1'])}\tdoc{hypotheses.index(r['translation2'])}\t{relevance}")
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return folder
