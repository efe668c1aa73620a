"""Weights & Biases tracking that never gets in a run's way.

- `WandbLogger` goes offline by itself when there are no credentials or the server is unreachable
  (`offline=True` forces it), bounds `wandb.init` by a timeout, and turns every W&B failure into a
  logged warning: local CSV logs, checkpoints, metrics.json and the export are never at stake.
- Names runs after their overrides (the swept values) and groups a multirun's jobs by sweep.
- `ValidationPairsView` logs, at each validation, a table of sampled pairs with their target and
  cosine, plotted as a scatter in the dashboard.
- `closing_wandb_run` logs the exported model folder as an artifact and closes the run, so every
  job of a multirun is its own W&B run.
"""
import functools
import logging
import netrc
import os
import re
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar
from urllib.parse import urlparse

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)

# keys that end in a secret's name: api_key, HF_TOKEN, client_secret, db_password (not tokenizer, pad_token_id)
SECRET_KEY = re.compile(r"(^|[^a-z])(api[_-]?key|token|secret|secret[_-]?key|passw(or)?d|credentials?)$", re.IGNORECASE)
REDACTED = "<redacted>"
DEFAULT_HOST = "https://api.wandb.ai"

T = TypeVar("T")


def redact_secrets(value: Any) -> Any:
    """A copy of a (nested) config with the values of secret-looking keys replaced."""
    if isinstance(value, Mapping):
        return {k: REDACTED if SECRET_KEY.search(str(k)) else redact_secrets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_secrets(v) for v in value)
    return value


def offline_reason(timeout: float = 3.0) -> str | None:
    """Why W&B cannot go online from here (no credentials, server unreachable), or None."""
    host = os.environ.get("WANDB_BASE_URL", DEFAULT_HOST)
    hostname = urlparse(host).hostname or host
    if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or _netrc_has(hostname)):
        return "no W&B credentials (WANDB_API_KEY or `wandb login`)"
    url = urlparse(host)
    try:
        socket.create_connection((hostname, url.port or (443 if url.scheme != "http" else 80)), timeout=timeout).close()
    except OSError as e:
        return f"{host} is unreachable ({e})"
    return None


def _netrc_has(hostname: str) -> bool:
    path = os.environ.get("NETRC", Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(hostname) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _hydra_run_labels() -> dict[str, str]:
    """Name (the job's overrides) and, in a multirun, group (the sweep folder) of this Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hydra = HydraConfig.get()
    labels = {"name": hydra.job.override_dirname}
    if str(hydra.mode) == "RunMode.MULTIRUN":
        labels["group"] = f"{hydra.job.name}-{Path(hydra.sweep.dir).name}"
    return {k: v for k, v in labels.items() if v}


def _never_raise(method: Callable[..., T]) -> Callable[..., T | None]:
    """W&B trouble is reported, never raised: tracking must not end a training run."""

    @functools.wraps(method)
    def wrapper(self: "WandbLogger", *args: Any, **kwargs: Any) -> T | None:
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            log.warning("W&B: %s failed (%s: %s); the run goes on", method.__name__, type(e).__name__, e)
            return None

    return wrapper


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, made safe to leave on everywhere (see the module docstring).

    `name`/`group` left null are filled from Hydra: the job's overrides and, in a multirun, the
    sweep folder. Everything else goes to `wandb.init` as in Lightning's logger.
    """

    def __init__(self, offline: bool = False, init_timeout: float = 60.0, **kwargs: Any) -> None:
        import wandb

        for key, value in _hydra_run_labels().items():
            kwargs[key] = kwargs.get(key) or value
        kwargs.setdefault("settings", wandb.Settings(init_timeout=init_timeout))
        # offline as wandb.init's mode, not Lightning's `offline` flag, which sets WANDB_MODE for
        # the whole process (and so for every later job of a multirun)
        super().__init__(mode="offline" if offline else kwargs.pop("mode", None), **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        if self._wandb_init.get("mode") is None and os.environ.get("WANDB_MODE") is None:
            reason = offline_reason()
            if reason:
                log.warning("W&B: offline, %s; upload later with `wandb sync %s/wandb/offline-run-*`",
                            reason, self.save_dir)
                self._wandb_init["mode"] = "offline"
        # online may still fail (bad key, server error, timeout): fall back offline, then to nothing
        for fallback in ("offline", "disabled"):
            try:
                return super().experiment
            except Exception as e:
                log.warning("W&B: init failed (%s: %s); continuing %s", type(e).__name__, e, fallback)
                self._experiment = None
                self._wandb_init["mode"] = fallback
        return super().experiment

    @_never_raise
    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        if isinstance(params, Mapping):
            params = redact_secrets(params)
        super().log_hyperparams(params)

    @_never_raise
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step)

    @_never_raise
    @rank_zero_only
    def log_scatter_table(self, key: str, columns: list[str], data: list[list[Any]], x: str, y: str,
                          step: int | None = None) -> None:
        """A wandb.Table under `key` and a scatter plot of its columns `x`, `y` under `<key>_scatter`."""
        import wandb

        table = wandb.Table(columns=columns, data=data)
        scatter = wandb.plot.scatter(table, x, y, title=f"{key}: {y} vs {x}")
        payload: dict[str, Any] = {key: table, f"{key}_scatter": scatter}
        if step is not None:
            payload["trainer/global_step"] = step
        self.experiment.log(payload)


@contextmanager
def closing_wandb_run(model_dir: Path) -> Iterator[None]:
    """Around a training job: at the end, log the exported model folder (if there is one) as a
    `model` artifact and finish the W&B run, marked failed if the job raised. Finishing is what
    makes every job of a multirun its own W&B run. A no-op where no W&B run was started (CSV-only
    runs, DDP ranks other than 0)."""
    try:
        yield
    except BaseException:
        _finish_run(None, exit_code=1)
        raise
    _finish_run(model_dir, exit_code=0)


def _finish_run(model_dir: Path | None, exit_code: int) -> None:
    wandb = sys.modules.get("wandb")  # never imported: no run to close
    run = getattr(wandb, "run", None)
    if run is None:
        return
    try:
        if model_dir is not None and model_dir.is_dir():
            artifact = wandb.Artifact(f"model-{run.id}", type="model", description=f"exported from {model_dir}")
            artifact.add_dir(str(model_dir))
            run.log_artifact(artifact, aliases=["latest"])
        run.finish(exit_code=exit_code)
    except Exception as e:
        log.warning("W&B: closing the run failed (%s: %s)", type(e).__name__, e)


class ValidationPairsView(L.Callback):
    """At each validation, a W&B table of `n_pairs` sampled validation pairs (the same pairs
    every time, so their cosines can be followed across steps) with target and cosine, and a
    scatter of cosine vs target. Does nothing without a W&B logger. Under DDP the sample comes
    from rank 0's share of the pairs.

    Reads what `validation_step` returns: `{"cosine", "score", "index"}` tensors.
    """

    def __init__(self, n_pairs: int = 200, seed: int = 0) -> None:
        self.n_pairs = n_pairs
        self.seed = seed
        self._rows: list[torch.Tensor] = []

    @staticmethod
    def _wandb(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.is_global_zero and self._wandb(trainer) and isinstance(outputs, Mapping):
            self._rows.append(torch.stack([outputs["index"].double(), outputs["score"].double(),
                                           outputs["cosine"].double()], dim=1).cpu())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = self._wandb(trainer)
        if logger is None or not self._rows or trainer.sanity_checking:
            return
        rows = torch.cat(self._rows).numpy()
        self._rows = []
        rows = rows[np.argsort(rows[:, 0], kind="stable")]  # by pair index, so the sample is stable
        if len(rows) > self.n_pairs:
            rows = rows[np.sort(np.random.default_rng(self.seed).choice(len(rows), self.n_pairs, replace=False))]
        texts = _pair_texts(trainer, rows[:, 0].astype(int))
        data = [[int(i), *texts[k], float(t), float(c)] for k, (i, t, c) in enumerate(rows)]
        logger.log_scatter_table("val/pairs", ["index", "sentence1", "sentence2", "target", "cosine"], data,
                                 x="target", y="cosine", step=trainer.global_step)


def _pair_texts(trainer: L.Trainer, indices: np.ndarray) -> list[tuple[str, str]]:
    """The two sentences of validation pairs, from the data module's split (empty if unknown)."""
    split = getattr(trainer.datamodule, "splits", {}).get("val")
    if split is None or not {"sentence1", "sentence2"} <= set(split.column_names):
        return [("", "")] * len(indices)
    rows = split.select(indices.tolist())
    return list(zip(rows["sentence1"], rows["sentence2"]))
