"""A killed run resumes and loses nothing: SIGKILL and SIGTERM for real, in subprocesses; atomic
checkpoints; non-finite losses; run folders that are never overwritten."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

import src
from src.errors import NonFiniteLossError, UserInputError
from src.losses import CosineSimilarityLoss
from src.resume import AtomicCheckpointIO, resolve_ckpt_path
from src.train import train
from tests.conftest import compose_train_cfg


class SeenPairs(L.Callback):
    """Test probe: appends `<global step> <pair index>...` for every training step, then sleeps
    `delay` seconds so that a test can stop the run mid-epoch."""

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path = Path(path)
        self.delay = delay

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with self.path.open("a") as f:
            f.write(" ".join(map(str, [trainer.global_step, *batch["index"].tolist()])) + "\n")
        time.sleep(self.delay)


class NanLossAt(CosineSimilarityLoss):
    """Test loss: cosine MSE, but NaN on the `at`-th training call (counting from 1)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, *args, **kwargs) -> torch.Tensor:
        loss = super().forward(*args, **kwargs)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                return loss * float("nan")
        return loss


def seen_by_step(path: Path) -> dict[int, list[int]]:
    """Pair indices per optimizer step; a step logged again after a resume replaces the first try."""
    steps = {}
    for line in path.read_text().splitlines():
        step, *indices = map(int, line.split())
        steps[step] = indices
    return steps


def start_run(run_dir: Path, tiny_bert: Path, *extra: str, delay: float = 0.0) -> subprocess.Popen:
    """`python -m src.train` on the tiny BERT for one full epoch, logging the pairs of every step."""
    args = [
        "+experiment=demo", f"model.name_or_path={tiny_bert}", "model.max_seq_length=64",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "trainer.max_steps=-1", "trainer.max_epochs=1", "data.eval_batch_size=64",
        f"hydra.run.dir={run_dir}", f"paths.cache_dir={run_dir.parent / (run_dir.name + '_cache')}",
        "+callbacks.seen_pairs._target_=tests.test_resume.SeenPairs",
        f"+callbacks.seen_pairs.path={run_dir.parent / (run_dir.name + '_seen.txt')}",
        f"+callbacks.seen_pairs.delay={delay}", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=src.PROJECT_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def finish(proc: subprocess.Popen) -> int:
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return proc.returncode


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_bert):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = start_run(straight, tiny_bert)
    every_4 = "callbacks.periodic_checkpoint.every_n_train_steps=4"
    proc = start_run(killed, tiny_bert, every_4, delay=0.3)
    last = killed / "checkpoints" / "last.ckpt"
    wait_for(last.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    interrupted_at = load(last)["global_step"]
    # the same folder again, no ckpt_path: it resumes from its last.ckpt by itself
    finish(start_run(killed, tiny_bert, every_4))
    finish(reference)

    seen, expected = seen_by_step(tmp_path / "killed_seen.txt"), seen_by_step(tmp_path / "straight_seen.txt")
    n_steps = max(expected)
    assert 0 < interrupted_at < n_steps  # it really was killed mid-epoch
    assert seen == expected  # same batches at the same steps
    pairs = sorted(i for indices in seen.values() for i in indices)
    assert pairs == list(range(len(pairs)))  # every training pair exactly once
    a, b = load(killed / "checkpoints" / "last.ckpt"), load(straight / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == n_steps
    assert a["lr_schedulers"] == b["lr_schedulers"]  # the same schedule, ending at the same step
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics == pytest.approx(json.loads((straight / "metrics.json").read_text()), abs=1e-4)


@pytest.mark.slow  # two more subprocess runs; the SIGKILL test covers resuming on the fast path
def test_sigterm_saves_a_checkpoint_and_exits_as_preempted(tmp_path, tiny_bert):
    run = tmp_path / "run"
    proc = start_run(run, tiny_bert, "callbacks.periodic_checkpoint.every_n_train_steps=1000", delay=0.3)
    seen = tmp_path / "run_seen.txt"
    wait_for(lambda: seen.exists() and len(seen.read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    checkpoint = load(run / "checkpoints" / "last.ckpt")
    done = max(seen_by_step(seen))
    assert checkpoint["global_step"] == done
    assert checkpoint["PairDataModule"] == {"epoch": 0, "batches_done": done}
    # `ckpt_path=last` carries on from there to the end of the epoch
    finish(start_run(run, tiny_bert, "ckpt_path=last"))
    pairs = sorted(i for indices in seen_by_step(seen).values() for i in indices)
    assert pairs == list(range(len(pairs)))


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_overrides):
    cfg = compose_train_cfg(
        tiny_overrides + ["loss._target_=tests.test_resume.NanLossAt", "+loss.at=4",
                          "callbacks.periodic_checkpoint.every_n_train_steps=1"],
        tmp_path,
    )
    with pytest.raises(NonFiniteLossError, match=r"training step 3: the loss is nan"):
        train(cfg)
    last = load(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())


def test_nonfinite_loss_skip_drops_the_batch_and_counts_it(tmp_path, tiny_overrides):
    cfg = compose_train_cfg(
        tiny_overrides + ["loss._target_=tests.test_resume.NanLossAt", "+loss.at=2", "model.nonfinite_loss=skip",
                          "trainer.log_every_n_steps=1"],
        tmp_path,
    )
    metrics = train(cfg)
    assert all(map(torch.isfinite, torch.tensor(list(metrics.values()))))
    assert load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 6  # max_steps, one batch more
    assert "train/nonfinite_skipped" in (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]


def test_atomic_checkpoint_io_leaves_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def crash(*args, **kwargs):
        Path(args[1]).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", crash)
    with pytest.raises(OSError):
        io.save_checkpoint({"step": 2}, path)
    assert load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no half-written leftovers


def test_a_finished_run_folder_is_never_started_afresh(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(UserInputError, match="holds a finished run"):
        resolve_ckpt_path(None, tmp_path)


def test_run_folders_are_unique_within_a_second(tmp_path):
    """Two runs started in the same second get different folders."""
    code = ("from hydra import compose, initialize_config_dir; import src; "
            "initialize_config_dir(config_dir=str(src.CONFIG_DIR), version_base='1.3'); "
            "cfg = compose('train', return_hydra_config=True); print(cfg.hydra.run.dir)")
    dirs = {subprocess.run([sys.executable, "-c", code], cwd=src.PROJECT_ROOT, capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)}
    assert len(dirs) == 2
