"""The bi-encoder LightningModule: a Hugging Face encoder, pooling, and a pair objective."""
import logging
import math
from typing import Any, Literal, Mapping

import lightning as L
import torch
from hydra.utils import instantiate
from transformers import get_scheduler

from src.data.columns import text_columns
from src.encoder import SentenceEncoder
from src.errors import NonFiniteLossError, UserInputError
from src.evaluation.similarity import EmbeddingSimilarityMetrics
from src.evaluation.views import EvaluationViews
from src.pooling import Pooling
from src.schema import Fraction, NonNegativeFloat, PositiveFloat, PositiveInt

log = logging.getLogger(__name__)

DEFAULT_LOSS = {"_target_": "src.losses.CosineSimilarityLoss"}


class SentenceEmbeddingModel(L.LightningModule):
    """Mean (or cls/max/mean_sqrt_len) pooled sentence embeddings trained on scored pairs.

    Hyperparameters are saved in checkpoints, so `load_from_checkpoint` rebuilds the same model.
    Validation and test accumulate the ten similarity metrics over the whole split, and the
    retrieval and classification views where the data's batches carry their columns.
    """

    # One parameter per `model.*` config key, saved as the checkpoint's hyperparameters so that
    # `load_from_checkpoint` rebuilds the same model from them alone.
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
        self.save_hyperparameters()
        self.encoder = SentenceEncoder(name_or_path, pooling, max_seq_length, normalize, sentences_per_pass, trust_remote_code)
        self.nonfinite_skipped = 0
        self.loss_fn = instantiate(dict(loss or DEFAULT_LOSS))
        if compile:
            self.encoder.transformer.compile()  # in place: parameter names, and so checkpoints, stay the same
        self.val_metrics = EmbeddingSimilarityMetrics()
        self.test_metrics = EmbeddingSimilarityMetrics()
        self.val_views = EvaluationViews()
        self.test_views = EvaluationViews()

    def on_fit_start(self) -> None:
        data_format = getattr(self.trainer.datamodule, "train_format", "pairs")
        if data_format != self.loss_fn.train_format:
            raise UserInputError(
                f"data.train_format: {data_format!r}, but the loss {type(self.loss_fn).__name__} trains on "
                f"{self.loss_fn.train_format!r}; pick the loss with `loss=...`, which sets it"
            )

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # (a, b) scored pairs, or (anchor, positive) triplets with hard negatives in `c` when the batch has any
        embeddings = self.encoder.embed_columns(batch, text_columns(batch))
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
            columns = text_columns(batch)
            embeddings = dict(zip(columns, self.encoder.embed_columns(batch, columns)))
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
