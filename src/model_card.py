"""The model card (`model/README.md`) of a training run, generated from the run itself.

The sections follow sentence-transformers' generated cards: front matter for the Hub, model
details and architecture, usage, the evaluation (the ten correlations, and the retrieval and
classification views where the run had them), the training data (size, token statistics,
label shares, samples), the loss with its parameters and citation (taken from the loss module),
hyperparameters, the training logs (collected by `TrainingLogs`), versions and citations.
The layout is the template `src/templates/model_card.md`; every number comes from here.
"""
import importlib.metadata
import inspect
import math
import platform
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from omegaconf import DictConfig, OmegaConf

from src.data.columns import input_ids_key
from src.evaluation.views import SIMILARITY, VIEWS, evaluation_tables
from src.losses import SBERT_CITATION
from src.st_format import module_configs
from src.tracking import redact_secrets

TEMPLATES = Path(__file__).parent / "templates"
STATS_ROWS = 1000  # token statistics and label shares over the first rows, as sentence-transformers
MAX_CLASSES = 20  # more distinct labels than this are scores, summarised by their range
FRAMEWORKS = {
    "Python": None,
    "Sentence Transformers": "sentence-transformers",
    "Transformers": "transformers",
    "PyTorch": "torch",
    "Lightning": "lightning",
    "Datasets": "datasets",
    "Tokenizers": "tokenizers",
}


class TrainingLogs(L.Callback):
    """Rows of the card's training-logs table: at each validation while fitting, the epoch, the
    optimizer step, the mean training loss since the previous validation, `val/spearman_max` and,
    where the retrieval view ran, `val/retrieval_ndcg@10`.

    Its rows are saved in checkpoints, so a resumed run's card still lists the earlier ones.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # a skipped step (model.nonfinite_loss=skip) hands callbacks an empty dict
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None:
            # Lightning hands over the loss divided by the accumulation factor (what backward saw)
            self._losses.append(float(loss) * trainer.accumulate_grad_batches)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        steps_per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
        spearman = trainer.callback_metrics.get("val/spearman_max")
        ndcg = trainer.callback_metrics.get("val/retrieval_ndcg@10")
        self.rows.append({
            "epoch": trainer.global_step / steps_per_epoch,
            "step": trainer.global_step,
            "training_loss": sum(self._losses) / len(self._losses) if self._losses else None,
            "spearman_max": float(spearman) if spearman is not None else None,
            "ndcg": float(ndcg) if ndcg is not None else None,
        })
        self._losses = []

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


def _version(package: str | None) -> str | None:
    if package is None:
        return platform.python_version()
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def hyperparameters(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(non-default, all) hyperparameters: the model, loss, data and trainer settings of the run.

    Non-default means different from the default of the class the section builds (its
    `_target_`'s signature), so the list shows what this run chose.
    """
    from hydra.utils import get_object

    every: dict[str, Any] = {"seed": cfg.seed}
    non_default: dict[str, Any] = {}
    for section in ("model", "data", "trainer"):
        # a card is published: a token in the config (gated Hub data) must not be
        values = redact_secrets(OmegaConf.to_container(cfg[section], resolve=True))
        values.pop("label_maps", None)  # the chosen map is `label_map`; the others are not settings
        parameters = inspect.signature(get_object(values["_target_"])).parameters
        for key, value in values.items():
            if key.startswith("_"):
                continue
            if key == "loss" and isinstance(value, Mapping):  # the loss is its own section below
                continue
            for name, leaf in _flatten(value, f"{section}.{key}.").items():
                every[name] = leaf
                default = parameters[key].default if key in parameters else inspect.Parameter.empty
                if default is inspect.Parameter.empty or default != value:
                    non_default[name] = leaf
    return non_default, every


def _column_stats(train, columns: Mapping[str, str], tokenizer) -> dict[str, Any]:
    """Per text column of the first rows: token counts (with special tokens) and three samples."""
    head = train.select(range(min(STATS_ROWS, len(train))))
    stats: dict[str, Any] = {"columns": [], "samples": []}
    texts: dict[str, list[str]] = {}
    for key, name in columns.items():
        ids = input_ids_key(key)
        if ids not in head.column_names:
            continue
        lengths = [len(x) for x in head[ids] if len(x)]  # triplets without a hard negative hold []
        text_column = {"a": "sentence1", "b": "sentence2"}.get(key)
        if text_column in head.column_names:
            texts[name] = head[text_column][:3]
        else:  # triplets keep only token ids
            texts[name] = tokenizer.batch_decode(head[ids][:3], skip_special_tokens=True)
        stats["columns"].append({
            "name": name, "min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths),
        })
    labels = head["label"] if "label" in head.column_names else []
    shares = Counter(labels)
    if len(shares) <= MAX_CLASSES:
        stats["label_details"] = [f"{label}: {100 * n / len(labels):.2f}%" for label, n in sorted(shares.items())]
    else:  # numeric (STS-style) scores: their range, not one share per value
        scores = head["score"]
        stats["label_details"] = [f"min: {min(scores):.2f}", f"mean: {sum(scores) / len(scores):.2f}",
                                  f"max: {max(scores):.2f}"]
    label_column = [labels[:3]] if labels else []
    stats["samples"] = [list(row) for row in zip(*texts.values(), *label_column)]
    stats["sample_header"] = list(texts) + (["label"] if labels else [])
    return stats


def _hub_id(name_or_path: str) -> str | None:
    """The base model's Hub id; None for a local folder, which the Hub cannot link to."""
    return None if Path(name_or_path).expanduser().exists() else name_or_path


@dataclass
class RunRecord:
    """What a card says about the run beside the model itself, gathered once from its config
    (`RunRecord.of`: by `src.train` at the end of a run, by `src.export` from the run folder)."""

    train_split: Any  # the tokenized training rows (datasets.Dataset)
    columns: dict[str, str]  # text column (a, b, c) -> its name in the data
    dataset_name: str
    val_name: str
    test_name: str
    label_map: str
    non_default: dict[str, Any]  # hyperparameters this run chose
    every: dict[str, Any]  # all of them
    metrics: Mapping[str, float]  # what metrics.json holds
    logs: list[dict[str, float]]  # the rows of `TrainingLogs`

    @classmethod
    def of(cls, cfg: DictConfig, train_split, metrics: Mapping[str, float], logs: list[dict[str, float]]) -> "RunRecord":
        data = cfg.data
        dataset_name = Path(str(data.train_file)).name
        held_out = f"{dataset_name} (held out)"
        non_default, every = hyperparameters(cfg)
        return cls(
            train_split=train_split,
            columns={"a": data.columns.sentence1, "b": data.columns.sentence2, "c": "negative"},
            dataset_name=dataset_name,
            val_name=Path(str(data.val_file)).name if data.get("val_file") else held_out,
            test_name=Path(str(data.test_file)).name if data.get("test_file") else held_out,
            label_map=data.label_map,
            non_default=non_default,
            every=every,
            metrics=metrics,
            logs=logs,
        )


def render_model_card(model, run: RunRecord) -> str:
    """The card of a run: `model` its final SentenceEmbeddingModel, `run` what it was trained and scored on."""
    hp = model.hparams
    base = hp.name_or_path
    configs = module_configs(model.encoder)
    loss = model.loss_fn
    loss_name = type(loss).__name__
    loss_config = loss.get_config_dict() if hasattr(loss, "get_config_dict") else {}
    loss_citation = getattr(loss, "citation", None)
    train_split, metrics, logs, val_name = run.train_split, run.metrics, run.logs, run.val_name
    val_tables, test_tables = evaluation_tables(metrics, "val/"), evaluation_tables(metrics, "test/")
    scored_views = [view for view in VIEWS if view in val_tables or view in test_tables]
    stats = _column_stats(train_split, run.columns, model.encoder.tokenizer)
    samples = stats["samples"]

    front_matter: dict[str, Any] = {
        "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction",
                 f"dataset_size:{len(train_split)}", f"loss:{loss_name}"],
        "base_model": _hub_id(base),
        "pipeline_tag": "sentence-similarity",
        "library_name": "sentence-transformers",
        "metrics": [name for view in dict.fromkeys([SIMILARITY, *scored_views]) for name in view.metric_names],
        "widget": [
            {"source_sentence": row[0], "sentences": [other[1] for other in samples[i:] + samples[:i]]}
            for i, row in enumerate(samples)
        ],
    }
    if front_matter["base_model"] is None:
        del front_matter["base_model"]
    if val_tables:
        front_matter["model-index"] = [{
            "name": f"SentenceTransformer based on {base}",
            "results": [{
                "task": {"type": view.task_type, "name": view.title},
                "dataset": {"name": val_name, "type": val_name},
                "metrics": [{"type": name, "value": metrics[f"val/{name}"], "name": name.replace("_", " ").title()}
                            for name in view.metric_names],
            } for view in val_tables],
        }]
    architecture = (
        "SentenceTransformer(\n"
        f"  (0): Transformer({ {k: v for k, v in configs['transformer'].items() if k != 'model_args'} | {'architecture': type(model.encoder.transformer).__name__} })\n"
        f"  (1): Pooling({configs['pooling']})\n"
        + ("  (2): Normalize()\n" if configs["normalize"] else "")
        + ")"
    )
    environment = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True)
    environment.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "sort_keys": False}  # Hebrew stays readable
    return environment.get_template("model_card.md").render(
        front_matter=yaml.safe_dump(front_matter, allow_unicode=True, sort_keys=False, width=10_000).strip(),
        base=base,
        base_is_hub=_hub_id(base) is not None,
        max_seq_length=hp.max_seq_length,
        dim=model.encoder.embedding_dim,
        architecture=architecture,
        usage_sentences=[row[0] for row in samples][:3],
        val_name=val_name,
        test_name=run.test_name,
        evaluation=[
            {"view": view, "val_table": val_tables.get(view), "test_table": test_tables.get(view)}
            for view in scored_views
        ],
        dataset_name=run.dataset_name,
        dataset_size=len(train_split),
        stats=stats,
        stats_rows=min(STATS_ROWS, len(train_split)),
        label_map=run.label_map,
        loss_name=loss_name,
        loss_config=loss_config,
        loss_citation=loss_citation if loss_citation and loss_citation.strip() != SBERT_CITATION.strip() else None,
        non_default=run.non_default,
        every=run.every,
        logs=logs,
        logs_ndcg=any(row.get("ndcg") is not None for row in logs),  # older checkpoints' rows have no ndcg
        versions={name: v for name, package in FRAMEWORKS.items() if (v := _version(package))},
        sbert_citation=SBERT_CITATION,
    )
