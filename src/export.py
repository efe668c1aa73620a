"""The sentence-transformers folder format, both ways, and `python -m src.export ckpt_path=<file.ckpt>`.

Writing uses the classic layout every sentence-transformers version loads (2.x to 6.x): the
encoder, its tokenizer and `sentence_bert_config.json` at the root, `1_Pooling/`, `2_Normalize/`
when the model normalizes, `modules.json` listing them. Reading (`load_model`) turns any model
source (such a folder, a Lightning checkpoint, a plain Hugging Face folder or Hub id) into a
`SentenceEmbeddingModel` that embeds exactly as the source does, for scoring.
"""
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from src.atomic import replace_folder, temporary_folder_for, write_json
from src.config import register_resolvers
from src.errors import UserInputError, user_errors

log = logging.getLogger(__name__)
register_resolvers()  # before @hydra.main composes the config

# our pooling mode -> the flag of sentence-transformers' Pooling config (classic key names)
POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}
# sentence-transformers 6's single `pooling_mode` values, for folders it saved itself
ST6_POOLING = {"cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len"}
MODULE_TYPES = {
    "transformer": "sentence_transformers.models.Transformer",
    "pooling": "sentence_transformers.models.Pooling",
    "normalize": "sentence_transformers.models.Normalize",
}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def module_configs(model) -> dict[str, Any]:
    """The configs of the sentence-transformers modules a SentenceEmbeddingModel becomes:
    `transformer` (sentence_bert_config.json), `pooling` (1_Pooling/config.json), `normalize`."""
    encoder = getattr(model.encoder, "_orig_mod", model.encoder)  # unwrap torch.compile
    transformer: dict[str, Any] = {"max_seq_length": model.hparams.max_seq_length, "do_lower_case": False}
    if encoder.config.model_type == "bert":
        # without it sentence-transformers adds a randomly initialised pooler and warns about it
        transformer["model_args"] = {"add_pooling_layer": False}
    pooling = (
        {"word_embedding_dimension": model.embedding_dim}
        | {flag: model.hparams.pooling == mode for mode, flag in POOLING_FLAGS.items()}
        | {"pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}
    )
    return {"transformer": transformer, "pooling": pooling, "normalize": bool(model.hparams.normalize)}


def save_sentence_transformer(model, output_dir: Path, card: str | None = None) -> Path:
    """Write `model` (a SentenceEmbeddingModel) as a sentence-transformers folder at `output_dir`.

    Atomic: everything goes to a temporary folder beside the target, which is then renamed into
    place, so a half-written folder never sits under the final name. Call on one rank only.
    """
    output_dir = Path(output_dir)
    tmp = temporary_folder_for(output_dir)
    configs = module_configs(model)
    getattr(model.encoder, "_orig_mod", model.encoder).save_pretrained(tmp)  # config.json + model.safetensors
    model.tokenizer.save_pretrained(tmp)  # model_max_length is max_seq_length
    write_json(tmp / "sentence_bert_config.json", configs["transformer"])
    (tmp / "1_Pooling").mkdir()
    write_json(tmp / "1_Pooling" / "config.json", configs["pooling"])
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": MODULE_TYPES["transformer"]},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": MODULE_TYPES["pooling"]},
    ]
    if configs["normalize"]:
        (tmp / "2_Normalize").mkdir()
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": MODULE_TYPES["normalize"]})
    write_json(tmp / "modules.json", modules)

    versions = {"sentence_transformers": _version("sentence-transformers"), "transformers": _version("transformers"),
                "pytorch": torch.__version__}
    write_json(
        tmp / "config_sentence_transformers.json",
        {
            # a version newer than the reader's makes it warn, so only a real installed one is named
            "__version__": {k: v for k, v in versions.items() if v},
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    if card is not None:
        (tmp / "README.md").write_text(card, encoding="utf-8")

    replace_folder(tmp, output_dir)
    log.info("sentence-transformers model written to %s", output_dir)
    return output_dir


def load_checkpoint_model(ckpt_path: str | Path):
    """The SentenceEmbeddingModel of a Lightning checkpoint, on the CPU, in eval mode."""
    from src.model import SentenceEmbeddingModel
    from src.resume import read_checkpoint_shapes

    path = Path(ckpt_path)
    if not path.is_file():
        raise UserInputError(f"ckpt_path: file not found: {path}")
    read_checkpoint_shapes(str(path))  # a corrupt or foreign file fails here, in one line
    return SentenceEmbeddingModel.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserInputError(f"{path}: cannot read it ({e})") from None


def read_sentence_transformer(folder: Path) -> dict[str, Any]:
    """The encoder folder, pooling, normalize flag and max_seq_length a sentence-transformers folder
    describes in `modules.json`; any module we cannot reproduce (e.g. Dense) is an error."""
    settings: dict[str, Any] = {"normalize": False}
    for module in _read_json(folder / "modules.json"):
        kind = module["type"].rsplit(".", 1)[-1]
        path = folder / module["path"]
        if kind == "Transformer":
            settings["name_or_path"] = str(path)
            for name in ("sentence_bert_config.json", "sentence_xlm-roberta_config.json"):
                if (path / name).is_file():
                    length = _read_json(path / name).get("max_seq_length")
                    if length:
                        settings["max_seq_length"] = int(length)
                    break
        elif kind == "Pooling":
            config = _read_json(path / "config.json")
            modes = [mode for mode, flag in POOLING_FLAGS.items() if config.get(flag)]
            modes += [ST6_POOLING.get(m, m) for m in _as_list(config.get("pooling_mode"))]
            if len(modes) != 1 or modes[0] not in POOLING_FLAGS:
                raise UserInputError(
                    f"{path / 'config.json'}: pooling {modes or config} is not supported "
                    f"(one of {', '.join(POOLING_FLAGS)})"
                )
            settings["pooling"] = modes[0]
        elif kind == "Normalize":
            settings["normalize"] = True
        else:
            raise UserInputError(f"{folder / 'modules.json'}: module {module['type']!r} is not supported")
    if "name_or_path" not in settings:
        raise UserInputError(f"{folder / 'modules.json'}: no Transformer module")
    return settings


def _as_list(value: Any) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def load_model(source: str, pooling: str | None = None, max_seq_length: int | None = None):
    """A SentenceEmbeddingModel (CPU, eval mode) that embeds as `source` does.

    `source`: a sentence-transformers folder (its `modules.json` decides pooling, normalization and
    max_seq_length), a Lightning `.ckpt`, or a plain Hugging Face folder or Hub id (`pooling`, mean
    by default). `pooling` / `max_seq_length`, when given, override what the source says.
    """
    from transformers import AutoConfig

    from src.model import SentenceEmbeddingModel

    path = Path(source).expanduser()
    if path.suffix == ".ckpt":
        model = load_checkpoint_model(path)
        if pooling:
            model.hparams.pooling = pooling
        if max_seq_length:
            model.hparams.max_seq_length = max_seq_length
            model.tokenizer.model_max_length = max_seq_length
        return model
    if (path / "modules.json").is_file():
        settings = read_sentence_transformer(path)
    else:
        settings = {"name_or_path": source, "normalize": False}
    settings["pooling"] = pooling or settings.get("pooling", "mean")
    if max_seq_length:
        settings["max_seq_length"] = max_seq_length
    if "max_seq_length" not in settings:
        # a plain model: as long as its position embeddings allow, at most 512 (as transformers' tokenizers)
        try:
            limit = getattr(AutoConfig.from_pretrained(settings["name_or_path"]), "max_position_embeddings", None)
        except (OSError, ValueError):
            limit = None  # SentenceEmbeddingModel raises the clear error
        settings["max_seq_length"] = min(limit or 512, 512)
    return SentenceEmbeddingModel(**settings).eval()


def checkpoint_card(model, ckpt_path: Path) -> str | None:
    """The model card of a checkpoint `src.train` wrote (`<run>/checkpoints/<file>.ckpt`), as the run
    would have written it: the run's config and training data, these weights' validation metrics,
    the training logs the checkpoint holds. None when the run folder is not beside it."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from src.model_card import TrainingLogs, render_model_card

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
    return render_model_card(model.eval(), run_cfg, datamodule.splits["train"], metrics, logs)


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors():
        ckpt = Path(cfg.ckpt_path)
        model = load_checkpoint_model(ckpt)
        output_dir = Path(cfg.output_dir) if cfg.output_dir else ckpt.with_suffix("")
        card = checkpoint_card(model, ckpt) if cfg.card else None
        save_sentence_transformer(model, output_dir, card=card)
        print(output_dir)


if __name__ == "__main__":
    main()
