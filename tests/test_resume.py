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
import numpy as np
import pytest
import torch

from src.config import PROJECT_ROOT, compose_config
from src.errors import NonFiniteLossError, UserInputError
from src.losses import CosineSimilarityLoss
from src.resume import AtomicCheckpointIO, resolve_ckpt_path
from src.train import train


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
    """`python -m src.train` on the tiny BERT for one full epoch (unless `extra` says otherwise),
    logging the pairs of every step."""
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
    return subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=PROJECT_ROOT, env=env,
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


@pytest.mark.slow  # several processes
def test_sigkill_inside_epoch_2_of_3_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_bert):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    epochs = "trainer.max_epochs=3"
    reference = start_run(straight, tiny_bert, epochs)
    every_4 = "callbacks.periodic_checkpoint.every_n_train_steps=4"
    proc = start_run(killed, tiny_bert, epochs, every_4, delay=0.1)
    last = killed / "checkpoints" / "last.ckpt"
    # the demo's train split is 16 batches of 16: kill once a checkpoint inside epoch 2 exists
    wait_for(lambda: last.exists() and load(last)["global_step"] > 16 and load(last)["global_step"] % 16, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    interrupted_at = load(last)["global_step"]
    # the same folder again, no ckpt_path: it resumes from its last.ckpt by itself
    finish(start_run(killed, tiny_bert, epochs, every_4))
    finish(reference)

    seen, expected = seen_by_step(tmp_path / "killed_seen.txt"), seen_by_step(tmp_path / "straight_seen.txt")
    n_steps = max(expected)
    assert n_steps == 48 and 16 < interrupted_at < 32  # it really was killed inside epoch 2
    assert seen == expected  # same batches at the same steps
    epochs_seen = [sorted(i for step in range(e * 16 + 1, e * 16 + 17) for i in seen[step]) for e in range(3)]
    assert epochs_seen[0] == epochs_seen[1] == epochs_seen[2] == list(range(len(epochs_seen[0])))  # each pair once
    assert seen[1] != seen[17]  # and each epoch in its own order
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
    position = checkpoint["PairDataModule"]
    assert (position["epoch"], position["batches_done"], position["global_step"]) == (0, done, done)
    trained = sorted(i for indices in seen_by_step(seen).values() for i in indices)
    assert torch.equal(position["trained"], torch.from_numpy(np.packbits(np.isin(np.arange(position["pairs"]), trained))))
    # `ckpt_path=last` carries on from there to the end of the epoch
    finish(start_run(run, tiny_bert, "ckpt_path=last"))
    pairs = sorted(i for indices in seen_by_step(seen).values() for i in indices)
    assert pairs == list(range(len(pairs)))


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_overrides):
    cfg = compose_config(
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
    cfg = compose_config(
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
    code = ("from hydra import compose, initialize_config_dir; from src.config import CONFIG_DIR, register_resolvers; "
            "register_resolvers(); initialize_config_dir(config_dir=str(CONFIG_DIR), version_base='1.3'); "
            "cfg = compose('train', return_hydra_config=True); print(cfg.hydra.run.dir)")
    dirs = {subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)}
    assert len(dirs) == 2


class BatchLog(L.Callback):
    """Test probe: appends `<epoch> <rank> <batch index> <pair index>...` for every training batch, and
    stops the run as a SIGTERM would after the `stop_after`-th batch this process trains."""

    def __init__(self, path: str, stop_after: int = 0) -> None:
        self.path = Path(path)
        self.stop_after, self.batches = stop_after, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with self.path.open("a") as f:
            f.write(" ".join(map(str, [trainer.current_epoch, trainer.global_rank, batch_idx, *batch["index"].tolist()])) + "\n")
        self.batches += 1
        if self.batches == self.stop_after:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler stops after this batch


def logged_epochs(path: Path) -> dict[int, list[list[int]]]:
    """The batches of each epoch (rank by rank, in order); a batch trained again after a resume
    replaces the first try."""
    batches: dict[tuple[int, int, int], list[int]] = {}
    for line in path.read_text().splitlines():
        epoch, rank, batch_idx, *indices = map(int, line.split())
        batches[epoch, rank, batch_idx] = indices
    epochs: dict[int, list[list[int]]] = {}
    for (epoch, _, _), indices in sorted(batches.items()):
        epochs.setdefault(epoch, []).append(indices)
    return epochs


def run_logged(tmp_path: Path, name: str, overrides: list[str], stop_after: int = 0, resume: bool = False):
    log = tmp_path / f"{name}.log"
    cfg = compose_config(
        overrides + ["+callbacks.batch_log._target_=tests.test_resume.BatchLog", f"+callbacks.batch_log.path={log}",
                     f"+callbacks.batch_log.stop_after={stop_after}", *(["ckpt_path=last"] if resume else [])],
        tmp_path / name,
    )
    if stop_after:
        with pytest.raises(SystemExit) as stopped:
            train(cfg)
        assert stopped.value.code == 128 + signal.SIGTERM
        return None
    return train(cfg)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_epoch_trains_every_pair_once_in_a_fresh_order(tmp_path, tiny_overrides, num_workers):
    """Lightning calls set_epoch on `batch_sampler.sampler` only: a batch sampler that kept its own
    epoch trained epoch 0's order every epoch."""
    overrides = tiny_overrides + ["trainer.max_steps=-1", "trainer.max_epochs=3", f"data.num_workers={num_workers}"]
    run_logged(tmp_path, "run", overrides)
    epochs = logged_epochs(tmp_path / "run.log")
    assert sorted(epochs) == [0, 1, 2]
    orders = [[i for batch in epochs[e] for i in batch] for e in range(3)]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(orders[2]) == list(range(len(orders[0])))
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]


@pytest.mark.slow  # a DDP run of several processes
@pytest.mark.parametrize("ranks", [2, 3])
def test_every_epoch_trains_every_pair_once_across_ddp_ranks(tmp_path, tiny_overrides, ranks):
    log = tmp_path / "batches.log"
    result = subprocess.run(
        [sys.executable, "-m", "src.train", *tiny_overrides, "trainer=ddp_cpu", f"trainer.devices={ranks}",
         "trainer.max_steps=-1", "trainer.max_epochs=3", "test=false", f"hydra.run.dir={tmp_path / 'run'}",
         f"paths.cache_dir={tmp_path / 'cache'}", "+callbacks.batch_log._target_=tests.test_resume.BatchLog",
         f"+callbacks.batch_log.path={log}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {int(line.split()[1]) for line in log.read_text().splitlines()} == set(range(ranks))
    epochs = logged_epochs(log)
    orders = [[i for batch in epochs[e] for i in batch] for e in range(3)]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(orders[2]) == list(range(len(orders[0])))
    assert orders[0] != orders[1] and orders[1] != orders[2]


def test_sigterm_mid_accumulation_resumes_exactly(tmp_path, tiny_overrides):
    """With accumulate_grad_batches=2, a stop after batch 21 (the first half of a group, inside
    epoch 2) loses that batch's gradients: the checkpoint says 20 were trained, and the resumed run
    ends with the uninterrupted run's metrics and weights."""
    overrides = tiny_overrides + ["trainer.max_steps=-1", "trainer.max_epochs=2", "trainer.accumulate_grad_batches=2",
                                  "callbacks.periodic_checkpoint.every_n_train_steps=1000"]
    straight = run_logged(tmp_path, "straight", overrides)
    run_logged(tmp_path, "stopped", overrides, stop_after=21)
    position = load(tmp_path / "stopped" / "checkpoints" / "last.ckpt")["PairDataModule"]
    assert (position["epoch"], position["batches_done"], position["global_step"]) == (1, 4, 10)
    resumed = run_logged(tmp_path, "stopped", overrides, resume=True)
    assert resumed == pytest.approx(straight, abs=1e-4)
    assert logged_epochs(tmp_path / "stopped.log") == logged_epochs(tmp_path / "straight.log")
    a = load(tmp_path / "stopped" / "checkpoints" / "last.ckpt")["state_dict"]
    b = load(tmp_path / "straight" / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in b)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_with_a_smaller_batch_trains_each_remaining_pair_once(tmp_path, tiny_overrides, num_workers):
    """Stopped inside epoch 2 of 3 at batch size 16, resumed at 8: epoch 2 ends with each of its
    untrained pairs once, epoch 3 is whole at the new size, and the learning rate decays to 0
    exactly at the last step."""
    overrides = tiny_overrides + ["trainer.max_steps=-1", "trainer.max_epochs=3", "trainer.log_every_n_steps=1",
                                  "callbacks.periodic_checkpoint.every_n_train_steps=1000", f"data.num_workers={num_workers}"]
    run_logged(tmp_path, "run", overrides, stop_after=21)
    run_logged(tmp_path, "run", overrides + ["data.batch_size=8"], resume=True)
    epochs = logged_epochs(tmp_path / "run.log")
    n_pairs = sum(len(b) for b in epochs[0])
    for e in range(3):
        assert sorted(i for batch in epochs[e] for i in batch) == list(range(n_pairs)), e
    assert [len(b) for b in epochs[1][:5]] == [16] * 5 and max(len(b) for b in epochs[1][5:] + epochs[2]) == 8
    assert len(epochs[2]) == -(-n_pairs // 8)  # the whole epoch: Lightning's loop was resized for it
    last = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == sum(len(epochs[e]) for e in range(3))
    lrs = [float(line.split(",")[0]) for line in _csv_column(tmp_path / "run" / "csv" / "metrics.csv", "train/lr/pg1")]
    assert lrs[-1] > 0 and last["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)


def _csv_column(path: Path, name: str) -> list[str]:
    import csv

    with path.open() as f:
        return [row[name] for row in csv.DictReader(f) if row.get(name)]
