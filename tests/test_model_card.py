"""The model card of a short run: every section, and numbers equal to the run's own."""
import json
import re
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate

from src.config import compose_config
from src.evaluation.views import VIEWS
from src.losses import CoSENTLoss
from src.train import train

SECTIONS = [
    "# SentenceTransformer based on", "## Model Details", "### Model Description", "### Full Model Architecture",
    "## Usage", "## Evaluation", "#### Semantic Similarity", "#### Information Retrieval", "#### Binary Classification",
    "* Evaluated with `InformationRetrievalEvaluator`", "* Evaluated with `BinaryClassificationEvaluator`",
    "## Training Details", "### Training Dataset",
    "* Samples:", "* Loss: `CoSENTLoss`", "#### Non-Default Hyperparameters", "#### All Hyperparameters",
    "### Training Logs", "### Framework Versions", "## Citation", "#### Sentence Transformers", "#### CoSENTLoss",
]


@pytest.fixture(scope="module")
def card_run(tmp_path_factory, tiny_bert) -> tuple[Path, object]:
    """Four steps of CoSENT on the tiny BERT, validated every two steps."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose_config(
        ["+experiment=demo", f"model.name_or_path={tiny_bert}", "model.max_seq_length=64", "loss=cosent",
         "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "trainer.max_steps=4", "trainer.val_check_interval=2", "data.eval_batch_size=32"],
        run,
    )
    train(cfg)
    return run, cfg


def split_card(text: str) -> tuple[dict, str]:
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_card_has_every_section_and_the_runs_numbers(card_run):
    run, cfg = card_run
    metrics = json.loads((run / "metrics.json").read_text())
    front, body = split_card((run / "model" / "README.md").read_text(encoding="utf-8"))
    for section in SECTIONS:
        assert section in body, section

    datamodule = instantiate(cfg.data)
    datamodule.setup()
    size = len(datamodule.splits["train"])
    assert front["tags"] == ["sentence-transformers", "sentence-similarity", "feature-extraction",
                             f"dataset_size:{size}", "loss:CoSENTLoss"]
    assert f"* Size: {size} training samples" in body
    assert (front["pipeline_tag"], front["library_name"]) == ("sentence-similarity", "sentence-transformers")
    assert "base_model" not in front  # a local base folder has no Hub id
    # the demo data has NLI labels: the retrieval and classification views beside the ten correlations
    names = [name for view in VIEWS for name in view.metric_names]
    assert front["metrics"] == names and len(names) == 10 + 6 + 3
    assert len(front["widget"]) == 3 and all(len(w["sentences"]) == 3 for w in front["widget"])
    assert front["widget"][0]["source_sentence"] in body  # also a training sample below

    results = front["model-index"][0]["results"]
    assert [r["task"]["type"] for r in results] == ["semantic-similarity", "information-retrieval", "binary-classification"]
    for result, view in zip(results, VIEWS):
        assert {m["type"]: m["value"] for m in result["metrics"]} == {n: metrics[f"val/{n}"] for n in view.metric_names}
    for view in VIEWS:
        section = body.split(f"#### {view.title}")[1].split("####")[0]
        for stage in ("val", "test"):
            for name in view.metric_names:
                value = f"{metrics[f'{stage}/{name}']:.4f}"
                row = f"| **{name}** | **{value}** |" if name == view.primary else f"| {name} | {value} |"
                assert row in section, (stage, row)

    # the architecture and model details describe the exported model
    assert "Transformer({'max_seq_length': 64, 'do_lower_case': False, 'architecture': 'BertModel'})" in body
    assert "'pooling_mode_mean_tokens': True" in body and "Normalize()" not in body
    assert "**Output Dimensionality:** 32 dimensions" in body and "**Maximum Sequence Length:** 64 tokens" in body

    # data statistics: three token figures per text column, the three classes' shares, three samples
    assert len(re.findall(r"<li>min: \d+ tokens</li><li>mean: [\d.]+ tokens</li><li>max: \d+ tokens</li>", body)) == 2
    assert re.search(r"<li>contradiction: [\d.]+%</li><li>entailment: [\d.]+%</li><li>neutral: [\d.]+%</li>", body)
    samples = body.split("* Samples:")[1].split("* Loss:")[0]
    assert samples.count("<code>") == 9

    # the loss, named from its module: parameters and citation
    loss = CoSENTLoss()
    assert json.dumps(loss.get_config_dict(), indent=2).replace("\n", "\n  ") in body
    assert loss.citation in body

    # hyperparameters: the run's choices among all of them
    non_default = body.split("#### Non-Default Hyperparameters")[1].split("#### All Hyperparameters")[0]
    assert "`trainer.max_steps`: 4" in non_default and "`model.lr`" not in non_default
    assert "`model.lr`: 5e-05" in body.split("#### All Hyperparameters")[1]

    # training logs: one row per validation while fitting; the best one's spearman_max is metrics.json's
    logs = body.split("### Training Logs")[1].split("###")[0]
    rows = [line.split("|")[1:-1] for line in logs.strip().splitlines()[2:]]
    assert [int(r[1]) for r in rows] == [2, 4]
    assert all(float(r[2]) > 0 for r in rows)  # a mean training loss at each
    assert f"{metrics['val/spearman_max']:.4f}" in [r[3].strip() for r in rows]
    assert f"{metrics['val/retrieval_ndcg@10']:.4f}" in [r[4].strip() for r in rows]

    versions = body.split("### Framework Versions")[1].split("##")[0]
    for name in ("Python", "Transformers", "PyTorch", "Lightning", "Datasets", "Tokenizers"):
        assert f"- {name}: " in versions


def test_card_hyperparameters_never_show_a_secret(tmp_path):
    from src.model_card import hyperparameters

    cfg = compose_config(["+experiment=demo", "+data.hf_token=hf_abc123", "+model.api_key=k-42"], tmp_path)
    non_default, every = hyperparameters(cfg)
    assert every["data.hf_token"] == every["model.api_key"] == "<redacted>"
    assert "hf_abc123" not in str(non_default) + str(every) and "k-42" not in str(every)


def test_training_logs_undo_lightnings_division_by_the_accumulation_factor():
    """Lightning hands callbacks the loss divided by accumulate_grad_batches (what backward saw)."""
    from types import SimpleNamespace

    import torch

    from src.model_card import TrainingLogs

    logs = TrainingLogs()
    trainer = SimpleNamespace(accumulate_grad_batches=4)
    for loss in (0.25, 0.5):  # the divided losses of two batches whose loss was 1.0 and 2.0
        logs.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, 0)
    assert logs._losses == [1.0, 2.0]
