"""Any model source as a `SentenceEmbeddingModel` that embeds exactly as the source does, for
scoring: a sentence-transformers folder, a Lightning checkpoint, a plain Hugging Face folder or Hub id."""
from pathlib import Path

from transformers import AutoConfig

from src.errors import UserInputError
from src.model import SentenceEmbeddingModel
from src.resume import read_checkpoint_shapes
from src.st_format import read_sentence_transformer


def load_checkpoint_model(ckpt_path: str | Path):
    """The SentenceEmbeddingModel of a Lightning checkpoint, on the CPU, in eval mode."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserInputError(f"ckpt_path: file not found: {path}")
    read_checkpoint_shapes(str(path))  # a corrupt or foreign file fails here, in one line
    return SentenceEmbeddingModel.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()


def load_model(source: str, pooling: str | None = None, max_seq_length: int | None = None):
    """A SentenceEmbeddingModel (CPU, eval mode) that embeds as `source` does.

    `source`: a sentence-transformers folder (its `modules.json` decides pooling, normalization and
    max_seq_length), a Lightning `.ckpt`, or a plain Hugging Face folder or Hub id (`pooling`, mean
    by default). `pooling` / `max_seq_length`, when given, override what the source says.
    """
    path = Path(source).expanduser()
    if path.suffix == ".ckpt":
        model = load_checkpoint_model(path)
        if pooling:
            model.hparams.pooling = model.encoder.pooling = pooling
        if max_seq_length:
            model.hparams.max_seq_length = max_seq_length
            model.encoder.set_max_seq_length(max_seq_length)
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
