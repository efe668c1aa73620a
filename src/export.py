"""`python -m src.export ckpt_path=<file.ckpt>`: a checkpoint as a sentence-transformers folder,
with the model card the run would have written for it."""
import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.config import register_resolvers
from src.console import tidy_library_logging
from src.errors import user_errors
from src.model_card import RunRecord, TrainingLogs, render_model_card
from src.sources import load_checkpoint_model
from src.st_format import save_sentence_transformer

log = logging.getLogger(__name__)
register_resolvers()  # before @hydra.main composes the config


def checkpoint_card(model, ckpt_path: Path) -> str | None:
    """The model card of a checkpoint `src.train` wrote (`<run>/checkpoints/<file>.ckpt`), as the run
    would have written it: the run's config and training data, these weights' validation metrics,
    the training logs the checkpoint holds. None when the run folder is not beside it."""
    run_dir = ckpt_path.resolve().parent.parent
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        log.warning("no model card: %s is not in a run folder (no %s)", ckpt_path, run_dir / ".hydra" / "config.yaml")
        return None
    run_cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    run_cfg.paths.output_dir = str(run_dir)  # was Hydra's runtime folder
    datamodule = instantiate(run_cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    metrics: dict[str, float] = {}
    if datamodule.has_split("val"):
        trainer = L.Trainer(devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
        metrics = {k: float(v) for k, v in trainer.validate(model, datamodule=datamodule, verbose=False)[0].items()}
    states = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("callbacks", {})
    logs = states.get(TrainingLogs.__qualname__, {}).get("rows", [])
    return render_model_card(model.eval(), RunRecord.of(run_cfg, datamodule.splits["train"], metrics, logs))


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    tidy_library_logging()
    with user_errors():
        ckpt = Path(cfg.ckpt_path)
        model = load_checkpoint_model(ckpt)
        output_dir = Path(cfg.output_dir) if cfg.output_dir else ckpt.with_suffix("")
        card = checkpoint_card(model, ckpt) if cfg.card else None
        save_sentence_transformer(model.encoder, output_dir, card=card)
        print(output_dir)


if __name__ == "__main__":
    main()
