"""DDP on 2 CPU processes (gloo): metrics (all three views) equal a single-process validation,
children stay in their job."""
import json
import os
import subprocess
import sys

import pytest

from src.config import PROJECT_ROOT, compose_config
from src.evaluation.views import VIEWS


@pytest.mark.slow  # several processes
def test_ddp_sweep_metrics_equal_single_process_validation(tmp_path, tiny_overrides):
    """Two DDP jobs in one multirun. The 54 validation pairs fit one eval batch of 64, fewer
    batches than ranks: every rank must still get one, or DDP hangs. The retrieval and
    classification views are gathered from both ranks: each rank scores half the pairs, and every
    query is ranked against the documents of both."""
    sweep = tmp_path / "sweep"
    data = ["data.eval_batch_size=64", f"paths.cache_dir={tmp_path / 'cache'}"]
    result = subprocess.run(
        [sys.executable, "-m", "src.train", "-m", "seed=1,2", *tiny_overrides, *data, "trainer=ddp_cpu",
         "trainer.max_steps=4", "trainer.val_check_interval=2", f"hydra.sweep.dir={sweep}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # each job's child process ran in that job's folder, as one run (no sweep of its own, no new folder)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        log = (sweep / job / "train.log").read_text()
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "GLOBAL_RANK: 0, MEMBER: 1/2" in log
    assert (sweep / "summary.csv").is_file()

    import lightning as L
    from hydra.utils import instantiate

    job = sweep / "0"
    ddp_metrics = json.loads((job / "metrics.json").read_text())
    (best,) = [p for p in (job / "checkpoints").iterdir() if p.name != "last.ckpt"]
    cfg = compose_config([*tiny_overrides, *data, "seed=1"], tmp_path / "single")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        use_distributed_sampler=False)
    single = trainer.validate(instantiate(cfg.model), datamodule=instantiate(cfg.data), ckpt_path=str(best))[0]
    for name in (name for view in VIEWS for name in view.metric_names):
        assert ddp_metrics[f"val/{name}"] == pytest.approx(single[f"val/{name}"], abs=1e-5), name


def _views(batches: list[dict]) -> dict[str, float]:
    """Both view metrics over some batches (small blocks, so the gathered corpus spans several)."""
    from src.evaluation.classification import PairClassificationMetrics
    from src.evaluation.retrieval import RetrievalMetrics

    retrieval, classification = RetrievalMetrics(query_block=16, document_block=64), PairClassificationMetrics()
    for batch in batches:
        retrieval.update(*batch["retrieval"])
        classification.update(*batch["classification"])
    return {name: float(value) for name, value in {**retrieval.compute(), **classification.compute()}.items()}


def _views_on_rank(rank: int, world_size: int, port: int, shards: list[list[dict]], out) -> None:
    """One DDP process: its shard of the batches, the numbers computed over all ranks."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    values = _views(shards[rank])
    if rank == 0:
        torch.save(values, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_views_gathered_over_two_processes_equal_one_process(tmp_path):
    """Uneven shards, a rank without a single query (as a BEIR rank given only documents), and
    rows repeated on both ranks: the gathered numbers are the single process's."""
    import socket

    import torch
    import torch.multiprocessing

    generator = torch.Generator().manual_seed(0)
    queries, documents = torch.randn(40, 8, generator=generator), torch.randn(200, 8, generator=generator)
    relevant = torch.stack([torch.arange(40).repeat(2), torch.randint(0, 200, (80,), generator=generator)], dim=1)
    emb_a, emb_b = torch.randn(150, 8, generator=generator), torch.randn(150, 8, generator=generator)
    labels = torch.randint(-1, 2, (150,), generator=generator)

    def batch(query_rows: range, document_rows: range, relevant_rows: range, pair_rows: range) -> dict:
        q, d, r, p = (torch.tensor(rows, dtype=torch.long) for rows in (query_rows, document_rows, relevant_rows, pair_rows))
        return {"retrieval": (queries[q], q, q, documents[d], d, d, relevant[r]),
                "classification": (emb_a[p], emb_b[p], labels[p], p)}

    rank0 = [batch(range(40), range(120), range(80), range(100))]
    rank1 = [batch(range(0), range(110, 200), range(0), range(90, 150)),
             batch(range(0), range(5), range(70, 80), range(3))]  # repeats of rank 0's rows
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torch.multiprocessing.spawn(_views_on_rank, args=(2, port, [rank0, rank1], tmp_path / "ddp.pt"), nprocs=2)
    gathered = torch.load(tmp_path / "ddp.pt")
    single = _views([batch(range(40), range(200), range(80), range(150))])
    assert len(gathered) == 9 and gathered == pytest.approx(single, abs=1e-12)
    assert single["retrieval_recall@10"] > 0  # not all-zero by accident


@pytest.mark.parametrize(
    ("accelerator", "cuda", "cuda_bf16", "mps", "cpu_amx", "expected"),
    [
        ("auto", True, True, False, True, "bf16-mixed"),
        ("gpu", True, False, False, True, "16-mixed"),
        ("cpu", True, True, False, False, "32-true"),  # a GPU box told to train on an old CPU
        ("auto", False, False, False, True, "bf16-mixed"),  # AMX CPU
        ("auto", False, False, False, False, "32-true"),
        ("auto", False, False, True, True, "32-true"),  # Apple MPS
    ],
)
def test_default_precision_follows_the_chip(monkeypatch, tmp_path, accelerator, cuda, cuda_bf16, mps, cpu_amx, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: cpu_amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # not enough: bf16 ran slower
    cfg = compose_config(["+experiment=demo", f"trainer.accelerator={accelerator}"], tmp_path)
    assert cfg.trainer.precision == expected
    # the reference recipe keeps its fp32 on any chip
    reference = compose_config(["+experiment=hebrew_nli_seed", f"trainer.accelerator={accelerator}"], tmp_path)
    assert reference.trainer.precision == "32-true"


@pytest.mark.parametrize("trainer", ["gpu", "ddp", "ddp_cpu"])
def test_trainer_presets_compose(tmp_path, trainer):
    import torch

    cfg = compose_config(["+experiment=demo", f"trainer={trainer}"], tmp_path)
    if trainer == "ddp_cpu":
        assert cfg.trainer.devices == 2 and cfg.trainer.strategy.process_group_backend == "gloo"
    else:  # mixed precision picked for this machine: fp32 without a GPU
        expected = ("bf16-mixed", "16-mixed") if torch.cuda.is_available() else ("32-true",)
        assert cfg.trainer.precision in expected
        assert cfg.trainer.accelerator == "gpu" and (trainer == "gpu" or cfg.trainer.strategy == "ddp")
    assert cfg.trainer.use_distributed_sampler is False  # PairBatchSampler shards by rank itself


def test_ddp_children_rerun_the_job_not_the_sweep(tmp_path, monkeypatch):
    """Lightning re-runs sys.argv; inside a multirun that is the whole sweep, in another folder."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    from src.distributed import hydra_subprocess_cmd

    compose_config(["+experiment=demo"], tmp_path)
    hydra = HydraConfig.get()
    with read_write(hydra):
        hydra.runtime.output_dir = str(tmp_path / "sweep" / "3")
        hydra.overrides.task = ["+experiment=demo", "model.lr=5e-05", "hparams_search=optuna"]
    monkeypatch.setattr(sys, "argv", ["src/train.py", "-m", "+experiment=demo", "model.lr=1e-5,5e-5"])
    command, cwd = hydra_subprocess_cmd(local_rank=1)
    args = command[command.index("+experiment=demo"):]
    assert args == ["+experiment=demo", "model.lr=5e-05", "hparams_search=optuna",
                    f'hydra.run.dir="{tmp_path / "sweep" / "3"}"', "hydra.mode=RUN",
                    "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    assert "model.lr=1e-5,5e-5" not in command
