"""`python -m src.train [+experiment=NAME] [key=value ...]`: train, pick the best checkpoint, score it.

The run folder (Hydra's) ends up holding `checkpoints/` (last and best by `optimized_metric`),
`metrics.json` (val and test numbers of the best checkpoint), `model/` (the best checkpoint as a
sentence-transformers folder), CSV logs and `.hydra/`.
Heavy libraries are imported inside `train()`, so a config typo fails in a second.
"""
import json
import logging
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from src.atomic import write_json
from src.config import register_resolvers
from src.errors import user_errors

log = logging.getLogger(__name__)
register_resolvers()  # before @hydra.main composes the config


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then validate and test the best checkpoint. Returns the final metrics."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities import rank_zero_only
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from src.console import tidy_library_logging
    from src.encoder import check_encoder_config
    from src.model_card import TrainingLogs
    from src.resume import PREEMPTED_EXIT_CODE, check_checkpoint_fits, read_checkpoint_shapes, resolve_ckpt_path
    from src.schema import check_config
    from src.tracking import redact_secrets

    tidy_library_logging()
    output_dir = Path(cfg.paths.output_dir)
    # what a user can get wrong fails here, in seconds, before any data or model work
    check_config(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    ckpt_shapes = read_checkpoint_shapes(ckpt_path) if ckpt_path else None
    check_encoder_config(cfg.model.name_or_path, cfg.model.max_seq_length, cfg.model.get("trust_remote_code", False))
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()  # reads and validates every split before the model loads
    model = instantiate(cfg.model)
    if ckpt_path:
        check_checkpoint_fits(ckpt_path, ckpt_shapes, model)

    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    for logger in trainer.loggers:  # the resolved config, minus anything that looks like a secret
        logger.log_hyperparams(redact_secrets(OmegaConf.to_container(cfg, resolve=True)))

    # the data module restores the position inside the epoch itself, exactly (PairDataModule.state_dict)
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:  # preempted: last.ckpt is saved (src.resume.PreemptionCheckpoint)
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    # taken now: validate/test below restore callback states from the best checkpoint, older rows
    logs = next((list(c.rows) for c in trainer.callbacks if isinstance(c, TrainingLogs)), [])

    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = (checkpoint.best_model_path or checkpoint.last_model_path) if checkpoint else None
    log.info("best checkpoint: %s", best)
    metrics: dict[str, float] = {}
    if datamodule.has_split("val"):
        metrics.update(trainer.validate(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)[0])
    if cfg.get("test") and datamodule.has_split("test"):
        metrics.update(trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)[0])
    metrics = {k: float(v) for k, v in sorted(metrics.items())}
    if trainer.is_global_zero:
        from src.model_card import RunRecord, render_model_card
        from src.st_format import save_sentence_transformer

        write_json(output_dir / "metrics.json", metrics)
        log.info("metrics: %s", json.dumps(metrics, indent=2))
        card = render_model_card(model, RunRecord.of(cfg, datamodule.splits["train"], metrics, logs))
        # validate/test above loaded the best checkpoint's weights into `model`; without them it
        # holds the last weights, which are then the best checkpoint too
        save_sentence_transformer(model.encoder, output_dir / "model", card=card)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from src.distributed import distributed_job
    from src.tracking import closing_wandb_run

    # each job (of a multirun too) is its own W&B run, closed with the exported model attached,
    # and has its own DDP process group and child processes
    with user_errors(), distributed_job(), closing_wandb_run(Path(cfg.paths.output_dir) / "model"):
        metrics = train(cfg)
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
