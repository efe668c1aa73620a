"""The sentence-transformers folder format, both ways.

Writing uses the classic layout every sentence-transformers version loads (2.x to 6.x): the
transformer, its tokenizer and `sentence_bert_config.json` at the root, `1_Pooling/`,
`2_Normalize/` when the model normalizes, `modules.json` listing them. Reading turns such a folder
back into the settings of a `SentenceEncoder` (transformer folder, pooling, normalization, length).
"""
import importlib.metadata
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers.utils import cached_file

from src.atomic import replace_folder, temporary_folder_for, write_json
from src.encoder import SentenceEncoder
from src.errors import UserInputError

log = logging.getLogger(__name__)

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


def module_configs(encoder: SentenceEncoder) -> dict[str, Any]:
    """The configs of the sentence-transformers modules `encoder` becomes: `transformer`
    (sentence_bert_config.json), `pooling` (1_Pooling/config.json), `normalize`."""
    transformer: dict[str, Any] = {"max_seq_length": encoder.max_seq_length, "do_lower_case": False}
    if encoder.transformer.config.model_type == "bert":
        # without it sentence-transformers adds a randomly initialised pooler and warns about it
        transformer["model_args"] = {"add_pooling_layer": False}
    pooling = (
        {"word_embedding_dimension": encoder.embedding_dim}
        | {flag: encoder.pooling == mode for mode, flag in POOLING_FLAGS.items()}
        | {"pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}
    )
    return {"transformer": transformer, "pooling": pooling, "normalize": bool(encoder.normalize)}


def copy_base_tokenizer_files(encoder: SentenceEncoder, folder: Path) -> None:
    """The tokenizer files the base model ships that `save_pretrained` did not write (transformers 5
    writes only tokenizer.json; a `vocab.txt` is what older and slow tokenizers read)."""
    for name in encoder.tokenizer.vocab_files_names.values():
        if (folder / name).exists():
            continue
        try:
            found = cached_file(encoder.name_or_path, name, _raise_exceptions_for_missing_entries=False)
        except OSError as e:  # the Hub out of reach: the folder still loads from tokenizer.json
            log.warning("%s: not copied from %s (%s)", name, encoder.name_or_path, type(e).__name__)
            continue
        if found is not None:
            shutil.copyfile(found, folder / name)


def save_sentence_transformer(encoder: SentenceEncoder, output_dir: Path, card: str | None = None) -> Path:
    """Write `encoder` as a sentence-transformers folder at `output_dir`.

    Atomic: everything goes to a temporary folder beside the target, which is then renamed into
    place, so a half-written folder never sits under the final name. Call on one rank only.
    """
    output_dir = Path(output_dir)
    tmp = temporary_folder_for(output_dir)
    configs = module_configs(encoder)
    transformer = getattr(encoder.transformer, "_orig_mod", encoder.transformer)  # unwrap torch.compile
    transformer.save_pretrained(tmp)  # config.json + model.safetensors
    encoder.tokenizer.save_pretrained(tmp)  # model_max_length is max_seq_length
    copy_base_tokenizer_files(encoder, tmp)
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
