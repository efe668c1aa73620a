"""The sentence-transformers export: it loads silently, keeps pooling and max_seq_length, and embeds
exactly as the LightningModule; `load_model` reads every kind of model source back."""
import json
import logging
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from src.config import PROJECT_ROOT, compose_config
from src.model import SentenceEmbeddingModel
from src.sources import load_checkpoint_model, load_model
from src.st_format import save_sentence_transformer
from src.train import train

SENTENCES = ["שלום עולם", "מה שלומך היום?", "א", "The cat sat on the mat, and then it slept for a very long time."]


@contextmanager
def captured_warnings():
    """Every warning logged by (sentence-)transformers or raised with `warnings` inside the block.

    transformers' loggers do not propagate to the root logger, so a handler goes on each directly.
    """
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.name}: {record.getMessage()}")

    handler = Collect(level=logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("transformers", "sentence_transformers", "")]
    for logger in loggers:
        logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield records
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
    records.extend(f"warning: {w.message}" for w in caught)


def load_sentence_transformer(path: Path):
    from sentence_transformers import SentenceTransformer

    with captured_warnings() as warned:
        model = SentenceTransformer(str(path), device="cpu")
    return model, warned


TINY_RUN_OVERRIDES = [
    "+experiment=demo", "model.max_seq_length=48", "model.pooling=cls",
    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "trainer.max_steps=4", "trainer.val_check_interval=2", "data.eval_batch_size=32",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert) -> Path:
    """A short training run on the tiny BERT with non-default pooling and max_seq_length."""
    run = tmp_path_factory.mktemp("run")
    train(compose_config(TINY_RUN_OVERRIDES + [f"model.name_or_path={tiny_bert}"], run))
    return run


def test_run_ends_with_a_sentence_transformers_folder(tiny_run):
    model_dir = tiny_run / "model"
    assert {p.name for p in model_dir.iterdir()} >= {
        "modules.json", "config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json",
        "1_Pooling", "config_sentence_transformers.json",
    }
    assert not any(p.name.startswith(".model") for p in tiny_run.iterdir())  # no temporary left behind
    st, warned = load_sentence_transformer(model_dir)
    assert warned == []
    assert st.max_seq_length == 48
    assert st[1].pooling_mode == "cls"
    assert len(st) == 2  # no Normalize: the model does not normalize

    best = next(p for p in (tiny_run / "checkpoints").iterdir() if p.name != "last.ckpt")
    lightning = load_checkpoint_model(best)
    expected = lightning.encoder.encode(SENTENCES)
    actual = torch.from_numpy(st.encode(SENTENCES, batch_size=2))
    assert (actual - expected).abs().max() <= 1e-5


def test_normalize_adds_the_module_and_load_model_reads_it_back(tmp_path, tiny_bert):
    model = SentenceEmbeddingModel(str(tiny_bert), pooling="mean_sqrt_len", max_seq_length=32, normalize=True).eval()
    save_sentence_transformer(model.encoder, tmp_path / "model")
    save_sentence_transformer(model.encoder, tmp_path / "model")  # overwriting an export works, atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    st, warned = load_sentence_transformer(tmp_path / "model")
    assert warned == [] and len(st) == 3
    expected = model.encoder.encode(SENTENCES)
    assert (torch.from_numpy(st.encode(SENTENCES)) - expected).abs().max() <= 1e-5
    assert torch.allclose(expected.norm(dim=-1), torch.ones(len(SENTENCES)))

    reloaded = load_model(str(tmp_path / "model"))
    assert (reloaded.hparams.pooling, reloaded.hparams.max_seq_length, reloaded.hparams.normalize) == (
        "mean_sqrt_len", 32, True)
    assert (reloaded.encoder.encode(SENTENCES) - expected).abs().max() <= 1e-6


def test_load_model_of_plain_folder_and_checkpoint(tiny_run, tiny_bert):
    plain = load_model(str(tiny_bert))
    assert (plain.hparams.pooling, plain.hparams.max_seq_length, plain.hparams.normalize) == ("mean", 128, False)
    assert load_model(str(tiny_bert), pooling="max", max_seq_length=16).hparams.pooling == "max"
    from_ckpt = load_model(str(tiny_run / "checkpoints" / "last.ckpt"))
    assert (from_ckpt.hparams.pooling, from_ckpt.hparams.max_seq_length) == ("cls", 48)


def test_export_command_writes_beside_the_checkpoint(tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [sys.executable, "-m", "src.export", f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'exported'}",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads((tmp_path / "exported" / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling"]
    missing = subprocess.run(
        [sys.executable, "-m", "src.export", f"ckpt_path={tmp_path / 'nope.ckpt'}", f"hydra.run.dir={tmp_path / 'h2'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert missing.returncode == 1 and "nope.ckpt" in missing.stderr


def test_export_command_writes_the_runs_card_for_the_checkpoint(tiny_run, tiny_bert, tmp_path):
    # what Hydra leaves in a run folder; the fixture trained through `train()`, which does not
    (tiny_run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(compose_config(TINY_RUN_OVERRIDES + [f"model.name_or_path={tiny_bert}"], tiny_run),
                   tiny_run / ".hydra" / "config.yaml")
    best = next(p for p in (tiny_run / "checkpoints").glob("step*.ckpt"))
    result = subprocess.run(
        [sys.executable, "-m", "src.export", f"ckpt_path={best}", f"output_dir={tmp_path / 'exported'}",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    front, body = (tmp_path / "exported" / "README.md").read_text(encoding="utf-8").split("---\n", 2)[1:]
    results = yaml.safe_load(front)["model-index"][0]["results"]  # one per view: the ten, retrieval, classification
    card_metrics = {m["type"]: m["value"] for result in results for m in result["metrics"]}
    run_metrics = json.loads((tiny_run / "metrics.json").read_text())  # the run validated its best checkpoint
    assert card_metrics == pytest.approx({k[4:]: v for k, v in run_metrics.items() if k.startswith("val/")
                                          and k != "val/loss"}, abs=1e-6)
    logs = body.split("### Training Logs")[1].split("###")[0].strip().splitlines()[2:]
    # the logs the checkpoint carries: the validations (every 2 steps) up to its own step
    best_step = int(best.stem.removeprefix("step"))
    assert [int(row.split("|")[2]) for row in logs] == [step for step in (2, 4) if step <= best_step]


@pytest.mark.slow
def test_real_minilm_export_matches_encode(tmp_path, minilm_path):
    model = SentenceEmbeddingModel(str(minilm_path), max_seq_length=256).eval()
    save_sentence_transformer(model.encoder, tmp_path / "model")
    st, warned = load_sentence_transformer(tmp_path / "model")
    assert warned == [] and st.max_seq_length == 256
    expected = model.encoder.encode(SENTENCES)
    assert (torch.from_numpy(st.encode(SENTENCES)) - expected).abs().max() <= 1e-5
    # the files the base model ships, vocab.txt among them (what slow and older tokenizers read)
    assert (tmp_path / "model" / "vocab.txt").read_bytes() == (minilm_path / "vocab.txt").read_bytes()
