"""Resume and run safety: which checkpoint to resume from, atomic checkpoint writes, preemption,
reproducible dropout across a resume, and refusing checkpoints that do not fit.

A run killed at any moment resumes from its `checkpoints/last.ckpt` (`ckpt_path=last`, or by
itself when its run folder is reused) and ends as if it had never stopped: the optimizer, LR
schedule and loop counters come back through Lightning; the position inside the epoch comes
back through `PairDataModule.state_dict`; dropout masks come from `StepSeed`.
"""
import logging
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.errors import UserInputError

log = logging.getLogger(__name__)

LAST = "last.ckpt"
# the exit status of a process ended by SIGTERM, which is what schedulers expect of a preempted job
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """The checkpoint to resume from: `last` means this run folder's last.ckpt, and a reused run
    folder that holds one resumes from it by itself. A folder holding a finished run (its
    metrics.json) is never started afresh, so an earlier run's results are never overwritten."""
    last = output_dir / "checkpoints" / LAST
    if ckpt_path == "last" or (ckpt_path is None and last.exists()):
        if not last.exists():
            raise UserInputError(f"ckpt_path=last: no checkpoint at {last}")
        log.info("resuming from %s", last)
        return str(last)
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise UserInputError(f"ckpt_path: file not found: {ckpt_path}")
    if ckpt_path is None and (output_dir / "metrics.json").exists():
        raise UserInputError(
            f"hydra.run.dir: {output_dir} holds a finished run (metrics.json); "
            "choose another folder, or give ckpt_path=... to continue from a checkpoint"
        )
    return ckpt_path


def read_checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Shapes of a checkpoint's weights, read safely (`weights_only=True`, memory-mapped).

    Called before any data or model work, so a truncated or corrupt file fails in a second.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated zip, wrong format, pickled code: all unloadable
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserInputError(
            f"ckpt_path: {path} is not a readable checkpoint ({type(e).__name__}: {reason}); "
            "it may be truncated or corrupt, or not saved by this toolkit"
        ) from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise UserInputError(f"ckpt_path: {path} is not a Lightning checkpoint (it has no state_dict)")
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def check_checkpoint_fits(path: str, shapes: dict[str, tuple[int, ...]], model: L.LightningModule) -> None:
    """Refuse a checkpoint whose weights are not this model's (another base model, pooling layer...)."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(expected.keys() - shapes.keys())
    unexpected = sorted(shapes.keys() - expected.keys())
    reshaped = sorted(n for n in expected.keys() & shapes.keys() if expected[n] != shapes[n])
    if not (missing or unexpected or reshaped):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if reshaped:
        name = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape (e.g. {name}: {list(shapes[name])} vs {list(expected[name])})")
    raise UserInputError(
        f"ckpt_path: {path} is from another model than model.name_or_path={model.hparams.get('name_or_path')}: "
        + "; ".join(problems)
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it into place.

    A run killed mid-write (SIGKILL, out of memory, node failure) leaves the previous checkpoint
    intact instead of a truncated one that can never be resumed.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.ckpt: never mistaken for a checkpoint
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class StepSeed(L.Callback):
    """Seeds torch before every training batch from (seed, rank, optimizer step, micro-batch).

    Dropout masks then depend on the position in training alone, not on how many batches this
    process has run, so a resumed run draws the same masks as an uninterrupted one; the micro-batch
    (the batch's place in a gradient-accumulation group) keeps the batches of one optimizer step
    from replaying the same masks.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        micro_batch = batch_idx % trainer.accumulate_grad_batches
        state = np.random.SeedSequence([self.seed, trainer.global_rank, trainer.global_step, micro_batch]).generate_state(1)
        torch.manual_seed(int(state[0]))


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM (SLURM preemption, `kill`), save `last.ckpt` once the current step is done.

    Lightning catches SIGTERM by itself and stops after the running batch by raising
    `SIGTERMException`; this callback saves the run's state at that point. A signal that lands
    during validation saves nothing (a half-run validation cannot be resumed exactly); the
    previous checkpoint stays. A signal in the middle of a gradient-accumulation group saves the
    position before that group: its batches' gradients were never applied, so they are trained
    again on resume.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        _rewind_unstepped_batches(trainer)
        path = self.dirpath / LAST
        trainer.save_checkpoint(path)
        log.warning("SIGTERM at step %d: saved %s; resume with ckpt_path=last", trainer.global_step, path)


def _rewind_unstepped_batches(trainer: L.Trainer) -> None:
    """Take the batches of an unfinished accumulation group off the loop's count, so the checkpoint
    (and the data module's position, read from the same count) says they were not trained."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    done = progress.current.processed
    if done >= trainer.num_training_batches:  # the epoch's last, partial group steps anyway
        return
    unstepped = done % trainer.accumulate_grad_batches
    for counter in (progress.current, progress.total):
        counter.ready -= unstepped
        counter.started -= unstepped
        counter.processed -= unstepped
        counter.completed -= unstepped
