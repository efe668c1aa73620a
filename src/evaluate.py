"""`python -m src.evaluate model=<x> data.test_file=<file>`: the ten similarity metrics of any model
on any scored pairs, and the retrieval and classification views where the data has their labels,
printed as tables and written to `metrics.json` (`test/...` keys) in this evaluation's own run
folder (`outputs/evaluate/runs/<time>/`). `data=beir data.path=<folder>`: the retrieval view on a
BEIR folder (src/data/beir.py).

`<x>` is anything `src.sources.load_model` reads: a sentence-transformers folder, a Lightning
checkpoint, a plain Hugging Face folder or Hub id. Pairs are read, cleaned and tokenized by the
training DataModule and scored by the LightningModule's test step, so the numbers are the ones a
training run reports for the same model and file.
"""
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from src.atomic import write_json
from src.config import register_resolvers
from src.errors import UserInputError, user_errors

log = logging.getLogger(__name__)
register_resolvers()  # before @hydra.main composes the config


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score `cfg.model.source` on the test split of `cfg.data`. Returns the `test/...` metrics of
    every view the data has."""
    from hydra.utils import instantiate

    from src.console import tidy_library_logging
    from src.evaluation.views import VIEWS, evaluation_tables
    from src.schema import check_config, check_node
    from src.sources import load_model

    tidy_library_logging()
    check_config(cfg, sections=("trainer",))
    model = load_model(cfg.model.source, cfg.model.pooling, cfg.model.max_seq_length)
    # the data module tokenizes as the model does, and reads only the split being scored (a pair
    # data group's train and val files are dropped)
    from_model = {"tokenizer": model.hparams.name_or_path, "max_seq_length": model.hparams.max_seq_length}
    unread = {key: None for key in ("train_file", "val_file") if key in cfg.data}
    check_node("data", {**OmegaConf.to_container(cfg.data, resolve=True), **from_model, **unread})
    datamodule = instantiate(cfg.data, **from_model, **unread)
    if not datamodule.has_split("test"):
        raise UserInputError("data.test_file: not set; name the file of pairs to score")
    trainer = instantiate(cfg.trainer)
    results = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    names = [f"test/{name}" for view in VIEWS for name in view.metric_names]
    metrics = {name: float(results[name]) for name in names if name in results}
    write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    tables = [
        f"{view.title} ({view.evaluator}: {view.description}):\n{table}"
        for view, table in evaluation_tables(metrics, prefix="test/").items()
    ]
    data = cfg.data.get("test_file") or cfg.data.get("path")
    print(f"{cfg.model.source} on {data}:\n\n" + "\n\n".join(tables))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg)


def expand_model_shorthand(argv: list[str]) -> list[str]:
    """`model=<x>` -> `model.source=<x>`: training's `model` config group would claim the plain form."""
    return [f"model.source={arg[len('model='):]}" if arg.startswith("model=") else arg for arg in argv]


if __name__ == "__main__":
    sys.argv = expand_model_shorthand(sys.argv)
    main()
