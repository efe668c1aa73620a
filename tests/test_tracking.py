"""W&B tracking, offline: runs are read back from the `run-*.wandb` files W&B wrote."""
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.config import PROJECT_ROOT, compose_config
from src.tracking import REDACTED, WandbLogger, closing_wandb_run, offline_reason, redact_secrets
from src.train import train


def wandb_records(run_file: Path) -> list:
    """The protobuf records of a `run-*.wandb` file (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding up to the block's end
            pos += block - pos % block if pos % block else 0
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # full/first, middle/last
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def read_run(run_dir: Path, wait_s: float = 20.0) -> dict:
    """What an offline run holds: its name/group, config, history keys, artifacts and exit code.

    wandb's service process may still be writing the run's last records when `finish()` returns.
    """
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + wait_s
    while (run := _parse_run(run_file))["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return run


def _parse_run(run_file: Path) -> dict:
    run: dict = {"config": {}, "history": set(), "artifacts": [], "exit_code": None}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, name=record.run.display_name, group=record.run.run_group)
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update if i.key})
        elif kind == "history":
            run["history"] |= {i.key or "/".join(i.nested_key) for i in record.history.item}
        elif kind == "artifact":
            run["artifacts"].append((record.artifact.type, record.artifact.name))
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def test_secrets_are_redacted_at_any_depth():
    cfg = {"logger": {"wandb": {"api_key": "abc", "project": "p"}}, "HF_TOKEN": "hf_x", "tokenizer": "bert",
           "hub": [{"password": "pw", "pad_token_id": 0}], "client_secret": 1}
    assert redact_secrets(cfg) == {"logger": {"wandb": {"api_key": REDACTED, "project": "p"}}, "HF_TOKEN": REDACTED,
                                   "tokenizer": "bert", "hub": [{"password": REDACTED, "pad_token_id": 0}],
                                   "client_secret": REDACTED}


def test_goes_offline_without_credentials_or_network(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert "no W&B credentials" in offline_reason()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    assert "unreachable" in offline_reason(timeout=1.0)


def test_wandb_failures_never_reach_the_run(monkeypatch, tmp_path):
    import wandb

    real_init = wandb.init

    def init(**kwargs):
        if kwargs.get("mode") != "disabled":
            raise RuntimeError("server says no")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    logger = WandbLogger(save_dir=str(tmp_path), project="p")
    logger.log_metrics({"train/loss": 1.0}, step=1)  # online and offline fail: runs on, disabled
    assert logger.experiment.disabled

    def broken_log(*args, **kwargs):
        raise ConnectionError("gone")

    monkeypatch.setattr(logger.experiment, "log", broken_log)
    logger.log_metrics({"train/loss": 1.0}, step=2)  # a warning, not an exception
    wandb.finish()


def test_offline_run_holds_config_metrics_pairs_and_model(tmp_path, tiny_overrides, monkeypatch):
    """No credentials: the run goes offline by itself and everything lands in the run file,
    the exported model folder (train() writes it to <run>/model) as an artifact."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run_dir = tmp_path / "run"
    cfg = compose_config(tiny_overrides + ["logger=many", "trainer.val_check_interval=3", "model.lr=3e-5"], run_dir)
    with closing_wandb_run(run_dir / "model"):
        metrics = train(cfg)

    run = read_run(run_dir)
    assert run["exit_code"] == 0
    assert "model.lr=3e-5" in run["name"]
    assert run["config"]["model"]["lr"] == 3e-5 and run["config"]["seed"] == 42
    assert run["config"]["data"]["tokenizer"] != REDACTED
    assert {"train/loss", "train/lr/pg1", "val/spearman_cosine", "val/pearson_max", "test/spearman_cosine",
            "val/retrieval_ndcg@10", "test/retrieval_ndcg@10", "val/classification_ap", "test/classification_ap",
            "val/pairs/_type", "val/pairs_scatter_table/_type", "trainer/global_step"} <= run["history"]
    assert ("model", f"model-{run['id']}") in run["artifacts"]
    assert (run_dir / "model" / "modules.json").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file() and (run_dir / "metrics.json").is_file()
    assert "val/spearman_cosine" in metrics


@pytest.mark.slow  # several processes
def test_each_sweep_job_is_its_own_run_grouped_by_sweep(tmp_path, tiny_overrides):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "src.train", "-m", "model.lr=1e-5,5e-5", *tiny_overrides, "logger=wandb",
         "logger.wandb.offline=true", "trainer.max_steps=2", "test=false", f"hydra.sweep.dir={sweep}",
         f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [read_run(sweep / job) for job in ("0", "1")]
    assert runs[0]["id"] != runs[1]["id"] and all(r["exit_code"] == 0 for r in runs)
    assert runs[0]["group"] == runs[1]["group"] == f"train-{sweep.name}"
    assert "model.lr=1e-05" in runs[0]["name"] and "model.lr=5e-05" in runs[1]["name"]
    assert all("val/spearman_cosine" in r["history"] for r in runs)
