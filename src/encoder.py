"""The sentence encoder: a Hugging Face transformer, pooling and optional normalization, as a plain
`torch.nn.Module` that turns token ids or sentences into embeddings.

Training (`src.model`), export (`src.st_format`), evaluation and the model card use it; it knows
nothing of Lightning. Loading checks the model's config first, so a bad name or length fails in
seconds with one line.
"""
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from src.console import pooler_report_dropped
from src.data.columns import attention_mask_key, input_ids_key
from src.errors import UserInputError
from src.pooling import Pooling, pool


def _not_found(name_or_path: str, error: Exception) -> UserInputError:
    return UserInputError(
        f"model.name_or_path: cannot load {name_or_path!r} ({type(error).__name__}); it is not a local "
        "folder, and the Hugging Face Hub is unreachable or has no such model. Point model.name_or_path "
        "at a local model folder (e.g. one saved with save_pretrained)"
    )


def load_tokenizer(name_or_path: str, max_seq_length: int, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's fast tokenizer; its `model_max_length` set to `max_seq_length`."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _not_found(name_or_path, e) from None
    tokenizer.model_max_length = max_seq_length
    return tokenizer


def check_encoder_config(name_or_path: str, max_seq_length: int, trust_remote_code: bool = False) -> PretrainedConfig:
    """The encoder's config, checked against the model settings. Reads only the config file, so a
    run calls it before any data work: a bad name or length fails in seconds."""
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _not_found(name_or_path, e) from None
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_seq_length > limit:
        raise UserInputError(
            f"model.max_seq_length: {max_seq_length} is above {name_or_path!r}'s position limit of {limit}"
        )
    return config


def load_transformer(name_or_path: str, max_seq_length: int, trust_remote_code: bool = False) -> torch.nn.Module:
    """The bare transformer, without a task head or (for BERT) the pooler.

    BERT's pooler is unused by mean/cls/max pooling; loading it would leave parameters without
    gradients, which DDP rejects, and newly initialised weights in the export.
    """
    config = check_encoder_config(name_or_path, max_seq_length, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "attn_implementation": "sdpa"}
    if config.model_type == "bert":
        kwargs["add_pooling_layer"] = False
    with pooler_report_dropped():  # the pooler is left out on purpose
        transformer = AutoModel.from_pretrained(name_or_path, config=config, **kwargs)
    # Hugging Face models load in eval mode; without this, dropout is silently off in training
    return transformer.train()


class SentenceEncoder(nn.Module):
    """Sentence embeddings from a transformer: `embed` (padded token ids), `embed_columns` (a batch of
    `PairCollator`), `encode` (sentences, as the exported sentence-transformers model gives)."""

    def __init__(
        self,
        name_or_path: str,
        pooling: Pooling = "mean",
        max_seq_length: int = 256,
        normalize: bool = False,
        sentences_per_pass: int | Literal["auto"] | None = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        self.name_or_path = name_or_path
        self.pooling = pooling
        self.max_seq_length = max_seq_length
        self.normalize = normalize
        self.per_pass_setting = sentences_per_pass
        self.transformer = load_transformer(name_or_path, max_seq_length, trust_remote_code)
        self.tokenizer = load_tokenizer(name_or_path, max_seq_length, trust_remote_code)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def set_max_seq_length(self, max_seq_length: int) -> None:
        self.max_seq_length = self.tokenizer.model_max_length = max_seq_length

    @property
    def embedding_dim(self) -> int:
        return self.transformer.config.hidden_size

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings `[N, dim]` of a padded batch of token ids."""
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        embeddings = pool(tokens, attention_mask, self.pooling)
        return F.normalize(embeddings, dim=-1) if self.normalize else embeddings

    @property
    def sentences_per_pass(self) -> int | None:
        """How many sentences go through the encoder at once; None: the whole batch in one pass.

        `auto`: one pass on accelerators, where one large launch beats several small ones; 8 on
        the CPU, where compute is the cost and the padding is what shorter passes save: a batch
        of 16 pairs in passes of 8 length-sorted sentences pads 10% of its tokens instead of 29%
        in one pass, and attention works on shorter rows; in fp32 on a 2-core CPU that trains at
        1.33x the one-pass speed with 40% less peak memory (on a CPU with AMX, in bf16, at 0.92x;
        benchmarks/results/vs_sentence_transformers*.md).
        """
        setting = self.per_pass_setting
        if setting == "auto":
            return 8 if self.device.type == "cpu" else None
        return setting

    def embed_columns(self, batch: Mapping[str, torch.Tensor], columns: tuple[str, ...] = ("a", "b")) -> list[torch.Tensor]:
        """Embeddings `[batch, dim]` of each text column of a batch from `PairCollator`.

        All the batch's sentences are sorted by length and encoded `sentences_per_pass` at a time,
        each pass padded to its own longest: every sentence's embedding is the same as in one
        pass (the mask hides padding), only the padded work shrinks.
        """
        ids = [batch[input_ids_key(c)] for c in columns]
        masks = [batch[attention_mask_key(c)] for c in columns]
        longest = max(i.shape[1] for i in ids)
        # what fills padded positions is irrelevant: the mask hides them from attention and pooling
        input_ids = torch.cat([F.pad(i, (0, longest - i.shape[1])) for i in ids])
        attention_mask = torch.cat([F.pad(m, (0, longest - m.shape[1])) for m in masks])
        per_pass = self.sentences_per_pass
        if per_pass is None or per_pass >= len(input_ids):
            embeddings = self.embed(input_ids, attention_mask)
        else:
            lengths = attention_mask.sum(dim=1).tolist()  # on the host: passes are sliced by it
            order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
            passes = []
            for start in range(0, len(order), per_pass):
                rows = torch.tensor(order[start : start + per_pass], device=input_ids.device)
                width = lengths[order[start]]
                passes.append(self.embed(input_ids[rows, :width], attention_mask[rows, :width]))
            restore = torch.empty(len(order), dtype=torch.long, device=input_ids.device)
            restore[torch.tensor(order, device=input_ids.device)] = torch.arange(len(order), device=input_ids.device)
            embeddings = torch.cat(passes)[restore]
        return list(embeddings.split([len(i) for i in ids]))

    @torch.inference_mode()
    def encode(self, sentences: list[str], batch_size: int = 64) -> torch.Tensor:
        """Embeddings `[len(sentences), dim]` on the CPU, in input order, as the exported model gives."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        out: list[torch.Tensor] = [None] * len(sentences)  # type: ignore[list-item]
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            tokens = self.tokenizer(
                [sentences[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="pt",
            ).to(self.device)
            embeddings = self.embed(tokens["input_ids"], tokens["attention_mask"]).float().cpu()
            for i, emb in zip(chunk, embeddings):
                out[i] = emb
        self.train(was_training)
        return torch.stack(out)
