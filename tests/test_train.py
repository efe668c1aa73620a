"""End-to-end training runs: the tiny BERT (fast), the demo experiment and real HebNLI pairs (slow)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from src.config import PROJECT_ROOT, compose_config
from src.evaluation.similarity import METRIC_NAMES
from src.train import train

TEN_VAL = {f"val/{m}" for m in METRIC_NAMES}
TEN_TEST = {f"test/{m}" for m in METRIC_NAMES}


def test_tiny_run_writes_checkpoints_and_metrics(tmp_path, tiny_overrides):
    cfg = compose_config(tiny_overrides + ["trainer.val_check_interval=3"], tmp_path / "run")
    metrics = train(cfg)
    run = tmp_path / "run"
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    assert TEN_VAL | TEN_TEST <= set(on_disk)
    assert all(-1 <= on_disk[k] <= 1 for k in TEN_VAL | TEN_TEST)
    checkpoints = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2  # last + best
    assert (run / "csv" / "metrics.csv").read_text().count("train/loss") == 1


def test_dropout_is_on_while_training(tmp_path, tiny_overrides):
    """HF models load in eval mode; training must switch dropout on, evaluation off."""
    import lightning as L
    from hydra.utils import instantiate

    cfg = compose_config(tiny_overrides, tmp_path)
    model = instantiate(cfg.model)
    seen = {}

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["train"] = pl_module.encoder.training and pl_module.encoder.transformer.embeddings.dropout.training

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["val"] = pl_module.encoder.training

    trainer = L.Trainer(max_steps=2, accelerator="cpu", callbacks=[Probe()], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=1,
                        val_check_interval=2, num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(model, datamodule=instantiate(cfg.data))
    assert seen == {"train": True, "val": False}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_training_steps_with_gradient_clipping_in_each_precision(tmp_path, tiny_overrides, precision):
    """The optimizer is fused where Lightning allows it; mixed precision still clips and trains."""
    import lightning as L
    from hydra.utils import instantiate

    cfg = compose_config(tiny_overrides, tmp_path)
    model = instantiate(cfg.model)
    before = model.encoder.transformer.encoder.layer[0].output.dense.weight.detach().clone()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", precision=precision, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        use_distributed_sampler=False)
    trainer.fit(model, datamodule=instantiate(cfg.data))
    assert trainer.global_step == 2
    assert trainer.optimizers[0].defaults["fused"] == (precision == "32-true")
    assert not torch.equal(model.encoder.transformer.encoder.layer[0].output.dense.weight, before)


def test_encode_matches_training_embeddings(tmp_path, tiny_overrides):
    from hydra.utils import instantiate

    cfg = compose_config(tiny_overrides, tmp_path)
    model = instantiate(cfg.model)
    sentences = ["שלום עולם", "מה שלומך היום?", "א"]
    batch = model.encoder.tokenizer(sentences, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model.encoder.embed(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(model.encoder.encode(sentences, batch_size=2), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("per_pass", [1, 3, 8])
def test_sentences_per_pass_gives_the_one_pass_embeddings_and_gradients(tmp_path, tiny_overrides, per_pass):
    from hydra.utils import instantiate

    cfg = compose_config(tiny_overrides, tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids_a"].shape[1] != batch["input_ids_b"].shape[1]  # the padding differs
    model = instantiate(cfg.model).eval()  # no dropout: the two forwards must see the same network

    def embed_and_grad(setting: int | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        model.encoder.per_pass_setting = setting
        model.zero_grad()
        embeddings = model.encoder.embed_columns(batch, ("a", "b"))
        model.loss_fn(embeddings, batch["score"]).backward()
        grad = model.encoder.transformer.embeddings.word_embeddings.weight.grad.clone()
        return [e.detach() for e in embeddings], grad

    one_pass, one_pass_grad = embed_and_grad(None)
    passes, passes_grad = embed_and_grad(per_pass)
    for x, y in zip(one_pass, passes):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_pass_grad, passes_grad, atol=1e-5, rtol=1e-4)
    model.encoder.per_pass_setting = "auto"
    assert model.encoder.sentences_per_pass == 8  # on the CPU


def test_config_typo_fails_fast_with_hydra_error():
    result = subprocess.run(
        [sys.executable, "-m", "src.train", "+experiment=demo", "model.learning_rate=1"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "learning_rate" in result.stderr


@pytest.mark.slow
def test_demo_experiment_runs_end_to_end(tmp_path):
    """The README's quick-start command, as a user runs it."""
    run = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "src.train", "+experiment=demo", f"hydra.run.dir={run}",
         f"paths.cache_dir={tmp_path / 'cache'}", "trainer.enable_progress_bar=false"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert TEN_VAL | TEN_TEST <= set(metrics)
    assert (run / ".hydra" / "config.yaml").is_file()
    # the console: each message once, no library notice that is not about this run
    console = result.stdout + result.stderr
    messages = [line.split("] - ", 1)[1] for line in console.splitlines() if "] - " in line]
    assert messages and all(a != b for a, b in zip(messages, messages[1:])), "a message printed twice"
    assert not any(line.startswith("INFO: ") for line in console.splitlines())  # Lightning's own handler
    for notice in ("LOAD REPORT", "litlogger", "is deprecated", "Traceback"):
        assert notice not in console, notice


@pytest.mark.slow
def test_real_hebnli_pairs_with_minilm(tmp_path, shared_hebnli):
    cfg = compose_config(
        ["+experiment=demo", f"data.train_file={shared_hebnli}", "trainer.max_steps=8",
         "trainer.enable_progress_bar=false", "data.val_fraction=0.1", "data.test_fraction=0.1"],
        tmp_path,
    )
    metrics = train(cfg)
    assert TEN_VAL | TEN_TEST <= set(metrics)
    # MiniLM already orders HebNLI pairs a little (about 0.1-0.2 Spearman); a broken pipeline gives ~0
    assert metrics["val/spearman_cosine"] > 0.05


def test_training_needs_none_of_the_optional_extras(tmp_path, tiny_overrides):
    """W&B, Optuna and SLURM are extras (`pip install -e ".[wandb,optuna,slurm]"`): a run without them trains."""
    blocked = ("wandb", "optuna", "submitit", "hydra_plugins.hydra_optuna_sweeper", "hydra_plugins.hydra_submitit_launcher")
    code = (f"import runpy, sys\nfor name in {blocked!r}:\n    sys.modules[name] = None  # import fails\n"
            "runpy.run_module('src.train', run_name='__main__', alter_sys=True)")
    result = subprocess.run(
        [sys.executable, "-c", code, *tiny_overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model" / "modules.json").is_file()
