"""The retrieval and classification views in runs: which data gets them, every validation logs
them, and the best checkpoint can be chosen by one of them."""
import json

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from src.config import compose_config
from src.evaluation.views import VIEWS
from src.train import train

BOTH = ("retrieval", "classification")


@pytest.mark.parametrize("overrides, expected", [
    ([], BOTH),  # HebNLI-shaped: the label map names entailment and contradiction
    (["data.label_map=seed"], BOTH),  # the reference's class ids, same labels
    (["data.label_map=float"], ()),  # numeric scores (STS): no labels to take the roles
    (["data.views.retrieval=false"], ("classification",)),
    (["data.views.classification=false"], ("retrieval",)),
    (["+data.label_maps.paraphrase={duplicate: 1.0, other: 0.0}", "data.label_map=paraphrase"], ()),
    (["+data.label_maps.paraphrase={duplicate: 1.0, other: 0.0}", "data.label_map=paraphrase",
      "data.view_labels.positive=duplicate", "data.view_labels.negative=other"], BOTH),
])
def test_views_are_on_where_the_label_map_names_their_labels(tmp_path, overrides, expected):
    cfg = compose_config(["+experiment=demo", *overrides], tmp_path)
    assert instantiate(cfg.data).eval_views == expected


def test_every_validation_logs_the_views_and_the_best_checkpoint_is_chosen_by_one(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    cfg = compose_config(
        tiny_overrides + ["trainer.val_check_interval=2", "model.lr=3e-3", "optimized_metric=val/retrieval_ndcg@10"], run
    )
    train(cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    names = {f"{stage}/{name}" for stage in ("val", "test") for view in VIEWS for name in view.metric_names}
    assert names <= set(metrics)

    log = pd.read_csv(run / "csv" / "metrics.csv")
    validations = log.dropna(subset=["val/retrieval_ndcg@10"])
    assert len(validations) == 4  # at steps 2, 4 and 6, and the best checkpoint's after training
    assert validations[[f"val/{name}" for view in VIEWS for name in view.metric_names]].notna().all().all()
    # the best checkpoint is the validation with the highest nDCG@10, and validated again it scores that
    best = validations["val/retrieval_ndcg@10"].max()
    states = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    (selection,) = [s for s in states.values() if s.get("monitor") == "val/retrieval_ndcg@10"]
    assert float(selection["best_model_score"]) == pytest.approx(best, abs=1e-6)
    assert metrics["val/retrieval_ndcg@10"] == pytest.approx(best, abs=1e-6)
