"""Hydra multiruns: grid sweeps, Optuna, the submitit launcher, and the sweep summary table."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from src.config import PROJECT_ROOT
from src.sweep_summary import summarize_sweep, to_markdown


def _multirun(args: list[str], tiny_overrides: list[str], tmp_path) -> subprocess.CompletedProcess:
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "src.train", *args, *tiny_overrides, "trainer.max_steps=2", "test=false",
         f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_grid_sweep_runs_every_job_and_ranks_them(tmp_path, tiny_overrides):
    """The README's sweep: 2 x 2 values, four jobs, each with its own folder and metrics.json."""
    _multirun(["-m", "model.lr=1e-5,5e-5", "data.batch_size=16,32"], tiny_overrides, tmp_path)
    sweep = tmp_path / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert jobs == ["0", "1", "2", "3"]
    swept = set()
    for job in jobs:
        overrides = yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        swept.add(tuple(o for o in overrides if o.startswith(("model.lr=", "data.batch_size="))))
        assert "val/spearman_cosine" in json.loads((sweep / job / "metrics.json").read_text())
    assert len(swept) == 4

    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 4 and list(summary["status"]) == ["ok"] * 4
    scores = list(summary["val/spearman_cosine"])
    assert scores == sorted(scores, reverse=True)
    best = json.loads((sweep / str(summary["job"][0]) / "metrics.json").read_text())
    assert best["val/spearman_cosine"] == pytest.approx(scores[0])
    markdown = (sweep / "summary.md").read_text()
    assert "| job | model.lr | data.batch_size | status | val/spearman_cosine |" in markdown
    assert markdown.count("| ok |") == 4


def test_optuna_search_runs_trials_and_summarizes(tmp_path, tiny_overrides):
    """`hparams_search=optuna` makes a multirun by itself; train() returns what Optuna maximizes."""
    _multirun(["hparams_search=optuna", "hydra.sweeper.n_trials=2"], tiny_overrides, tmp_path)
    sweep = tmp_path / "sweep"
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 2 and "model.lr" in summary
    assert results["best_value"] == pytest.approx(summary["val/spearman_cosine"][0])
    assert 1e-5 <= results["best_params"]["model.lr"] <= 1e-4


def test_submitit_local_launcher(tmp_path, tiny_overrides):
    """The engine behind `hydra/launcher=submitit_slurm`, run on this machine."""
    _multirun(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "seed=1,2"],
              tiny_overrides, tmp_path)
    sweep = tmp_path / "sweep"
    assert (sweep / ".submitit").is_dir()
    assert all((sweep / job / "metrics.json").is_file() for job in ("0", "1"))
    assert len(pd.read_csv(sweep / "summary.csv")) == 2


def _job(sweep, name: str, overrides: list[str], metrics: dict | None) -> None:
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))


@pytest.mark.parametrize("maximize", [True, False])
def test_summary_orders_best_first_and_lists_failed_jobs_last(tmp_path, maximize):
    for name, lr, score in [("0", "1e-5", 0.2), ("1", "2e-5", 0.5), ("2", "3e-5", None), ("10", "4e-5", 0.3)]:
        metrics = None if score is None else {"val/spearman_cosine": score, "test/spearman_cosine": score / 2,
                                              "val/retrieval_ndcg@10": score + 0.1, "val/retrieval_mrr@10": score}
        _job(tmp_path, name, ["+experiment=demo", f"model.lr={lr}"], metrics)
    table = summarize_sweep(tmp_path, "val/spearman_cosine", maximize=maximize)
    assert list(table["job"]) == (["1", "10", "0", "2"] if maximize else ["0", "10", "1", "2"])
    assert list(table.columns) == ["job", "experiment", "model.lr", "status", "val/spearman_cosine",
                                   "val/retrieval_mrr@10", "val/retrieval_ndcg@10", "test/spearman_cosine"]
    assert table["status"].iloc[-1] == "failed"
    markdown = to_markdown(table, "val/spearman_cosine")
    assert "Common overrides: `experiment=demo`" in markdown
    # held-out Spearman and nDCG@10 side by side; the CSV holds every metric
    assert "| job | model.lr | status | val/spearman_cosine | val/retrieval_ndcg@10 | test/spearman_cosine |" in markdown
