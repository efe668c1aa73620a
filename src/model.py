"""The bi-encoder LightningModule: a Hugging Face encoder, pooling, and a pair objective."""
import logging
import math
from typing import Any, Literal, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    get_scheduler,
)

from src.errors import NonFiniteLossError, UserInputError
from src.metrics import EmbeddingSimilarityMetrics
from src.pooling import Pooling, pool
from src.schema import Fraction, NonNegativeFloat, PositiveFloat, PositiveInt
from src.views import EvaluationViews

log = logging.getLogger(__name__)

DEFAULT_LOSS = {"_target_": "src.losses.CosineSimilarityLoss"}


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


def load_encoder(name_or_path: str, max_seq_length: int, trust_remote_code: bool = False) -> torch.nn.Module:
    """The bare encoder, without a task head or (for BERT) the pooler.

    BERT's pooler is unused by mean/cls/max pooling; loading it would leave parameters without
    gradients, which DDP rejects, and newly initialised weights in the export.
    """
    config = check_encoder_config(name_or_path, max_seq_length, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "attn_implementation": "sdpa"}
    if config.model_type == "bert":
        kwargs["add_pooling_layer"] = False
    encoder = AutoModel.from_pretrained(name_or_path, config=config, **kwargs)
    # Hugging Face models load in eval mode; without this, dropout is silently off in training
    return encoder.train()


class SentenceEmbeddingModel(L.LightningModule):
    """Mean (or cls/max/mean_sqrt_len) pooled sentence embeddings trained on scored pairs.

    Hyperparameters are saved in checkpoints, so `load_from_checkpoint` rebuilds the same model.
    Validation and test accumulate the ten similarity metrics over the whole split, and the
    retrieval and classification views where the data's batches carry their columns.
    """

    def __init__(
        self,
        name_or_path: str,
        pooling: Pooling = "mean",
        max_seq_length: PositiveInt = 256,
        normalize: bool = False,
        lr: PositiveFloat = 5e-5,
        weight_decay: NonNegativeFloat = 0.0,
        warmup_ratio: Fraction = 0.0,
        scheduler: str = "linear",
        adam_epsilon: PositiveFloat = 1e-8,
        loss: Mapping[str, Any] | None = None,
        compile: bool = False,
        sentences_per_pass: PositiveInt | Literal["auto"] | None = "auto",
        trust_remote_code: bool = False,
        # what a NaN/inf training loss does: stop the run, or skip that batch
        nonfinite_loss: Literal["error", "skip"] = "error",
    ) -> None:
        super().__init__()
        check_encoder_config(name_or_path, max_seq_length, trust_remote_code)
        self.save_hyperparameters()
        self.encoder = load_encoder(name_or_path, max_seq_length, trust_remote_code)
        self.nonfinite_skipped = 0
        self.tokenizer = load_tokenizer(name_or_path, max_seq_length, trust_remote_code)
        self.loss_fn = instantiate(dict(loss or DEFAULT_LOSS))
        if compile:
            self.encoder.compile()  # in place: parameter names, and so checkpoints, stay the same
        self.val_metrics = EmbeddingSimilarityMetrics()
        self.test_metrics = EmbeddingSimilarityMetrics()
        self.val_views = EvaluationViews()
        self.test_views = EvaluationViews()

    @property
    def embedding_dim(self) -> int:
        return self.encoder.config.hidden_size

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings `[N, dim]` of a padded batch of token ids."""
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        embeddings = pool(tokens, attention_mask, self.hparams.pooling)
        return F.normalize(embeddings, dim=-1) if self.hparams.normalize else embeddings

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
        setting = self.hparams.sentences_per_pass
        if setting == "auto":
            return 8 if self.device.type == "cpu" else None
        return setting

    def embed_columns(self, batch: Mapping[str, torch.Tensor], columns: tuple[str, ...] = ("a", "b")) -> list[torch.Tensor]:
        """Embeddings `[batch, dim]` of each text column of a batch from `PairCollator`.

        All the batch's sentences are sorted by length and encoded `sentences_per_pass` at a time,
        each pass padded to its own longest: every sentence's embedding is the same as in one
        pass (the mask hides padding), only the padded work shrinks.
        """
        ids = [batch[f"input_ids_{c}"] for c in columns]
        masks = [batch[f"attention_mask_{c}"] for c in columns]
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

    def on_fit_start(self) -> None:
        data_format = getattr(self.trainer.datamodule, "train_format", "pairs")
        if data_format != self.loss_fn.train_format:
            raise UserInputError(
                f"data.train_format: {data_format!r}, but the loss {type(self.loss_fn).__name__} trains on "
                f"{self.loss_fn.train_format!r}; pick the loss with `loss=...`, which sets it"
            )

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # (a, b) scored pairs, or (anchor, positive) triplets with hard negatives in `c` when the batch has any
        columns = tuple(sorted(key[len("input_ids_") :] for key in batch if key.startswith("input_ids_")))
        embeddings = self.embed_columns(batch, columns)
        loss = self.loss_fn(embeddings, batch.get("score"))
        if not torch.isfinite(loss):
            return self._nonfinite_loss(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(embeddings[0]))
        return loss

    def _nonfinite_loss(self, loss: torch.Tensor) -> None:
        """Stop with the step named (the last checkpoint stays good), or skip the batch and count it."""
        step = self.trainer.global_step
        if self.hparams.nonfinite_loss == "error":
            raise NonFiniteLossError(
                f"training step {step}: the loss is {loss.item()}; stopped before the optimizer step, so "
                "checkpoints/last.ckpt holds the last good weights (try a lower model.lr, trainer.precision=32-true, "
                "or model.nonfinite_loss=skip)"
            )
        self.nonfinite_skipped += 1
        log.warning("training step %d: the loss is %s; batch skipped (%d so far)", step, loss.item(), self.nonfinite_skipped)
        self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), reduce_fx="max")
        return None  # Lightning skips backward and the optimizer step

    def _eval_step(
        self, batch: Mapping[str, torch.Tensor], metrics: EmbeddingSimilarityMetrics, views: EvaluationViews, stage: str
    ) -> dict[str, torch.Tensor] | None:
        # scored in fp32 whatever the training precision, so the numbers equal `src.evaluate`'s and
        # sentence-transformers' evaluator's, on any machine
        with torch.autocast(self.device.type, enabled=False):
            columns = tuple(c for c in ("a", "b") if f"input_ids_{c}" in batch)
            embeddings = dict(zip(columns, self.embed_columns(batch, columns)))
        views.update(batch, embeddings)
        if "score" not in batch:  # retrieval data (a BEIR folder): queries and documents, no scored pairs
            return None
        emb_a, emb_b = embeddings["a"], embeddings["b"]
        metrics.update(emb_a, emb_b, batch["score"], batch["index"])
        # evaluation is on scored pairs; a triplet objective has no loss there (and must not gather:
        # ranks may hold different numbers of evaluation batches)
        if self.loss_fn.train_format == "pairs":
            loss = self.loss_fn([emb_a, emb_b], batch["score"])
            self.log(f"{stage}/loss", loss, batch_size=len(emb_a), sync_dist=True)
        # per-pair scores for callbacks (the W&B view of sampled pairs, src/tracking.py)
        cosine = torch.nn.functional.cosine_similarity(emb_a.detach().float(), emb_b.detach().float(), dim=-1)
        return {"cosine": cosine, "score": batch["score"], "index": batch["index"]}

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, self.val_metrics, self.val_views, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, self.test_metrics, self.test_views, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, self.val_views, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, self.test_views, "test")

    def _log_metrics(self, metrics: EmbeddingSimilarityMetrics, views: EvaluationViews, stage: str) -> None:
        values: dict[str, torch.Tensor] = {}
        if metrics.update_called:
            values.update(metrics.compute())  # already gathered over all ranks
            metrics.reset()
        values.update(views.compute_and_reset())
        # identical on every rank already; sync_dist only keeps Lightning from warning under DDP
        self.log_dict({f"{stage}/{name}": v for name, v in values.items()}, prog_bar=False, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
        params = [p for p in self.named_parameters() if p[1].requires_grad]
        groups = [
            {"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": self.hparams.weight_decay},
            {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        # fused: one kernel for all parameters (a 4x faster step on the CPU). Lightning refuses to clip
        # a fused optimizer's gradients under mixed precision (it may unscale fp16 gradients itself),
        # so there the optimizer takes torch's default path
        mixed_and_clipped = "mixed" in str(self.trainer.precision) and bool(self.trainer.gradient_clip_val)
        optimizer = torch.optim.AdamW(
            groups,
            lr=self.hparams.lr,
            eps=self.hparams.adam_epsilon,
            fused=self.device.type in ("cpu", "cuda") and not mixed_and_clipped,
        )
        total_steps = int(self.trainer.estimated_stepping_batches)
        if self.trainer.max_steps == -1:
            # a run resumed mid-epoch with another batch size or number of ranks: Lightning's estimate
            # assumes every epoch as long as the resumed one; the data module knows the real count
            planned = getattr(self.trainer.datamodule, "planned_optimizer_steps", lambda *_: None)(
                self.trainer.max_epochs, self.trainer.accumulate_grad_batches
            )
            total_steps = planned or total_steps
        scheduler = get_scheduler(
            self.hparams.scheduler,
            optimizer,
            num_warmup_steps=math.ceil(self.hparams.warmup_ratio * total_steps),
            num_training_steps=total_steps,
        )
        # logged by LearningRateMonitor as train/lr/pg1 (decayed parameters) and train/lr/pg2
        schedule = {"scheduler": scheduler, "interval": "step", "name": "train/lr"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

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
                max_length=self.hparams.max_seq_length,
                return_tensors="pt",
            ).to(self.device)
            embeddings = self.embed(tokens["input_ids"], tokens["attention_mask"]).float().cpu()
            for i, emb in zip(chunk, embeddings):
                out[i] = emb
        self.train(was_training)
        return torch.stack(out)
