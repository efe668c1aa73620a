"""`python -m src.evaluate`: the same numbers as training's test step and as sentence-transformers'
evaluators, for all three views."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import PROJECT_ROOT, compose_config
from src.data.files import PairColumns, read_pairs, resolve_label_map
from src.data.tokenized import distinct_text_ids
from src.evaluate import evaluate, expand_model_shorthand
from src.evaluation.retrieval import RECALL_AT
from src.evaluation.similarity import METRIC_NAMES
from src.evaluation.views import VIEWS
from src.train import train
from tests.helpers import DEMO_PAIRS, FrozenEmbeddings

ALL_TEST = {f"test/{name}" for view in VIEWS for name in view.metric_names}  # the ten, retrieval, classification


def compose_evaluate_cfg(overrides: list[str], output_dir: Path):
    return compose_config(overrides + ["trainer.enable_progress_bar=false"], output_dir, config_name="evaluate")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert) -> Path:
    """A short run on the tiny BERT, tested on the whole demo file."""
    run = tmp_path_factory.mktemp("run")
    overrides = [
        "+experiment=demo", f"model.name_or_path={tiny_bert}", "model.max_seq_length=64", "model.pooling=max",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "trainer.max_steps=4", "trainer.val_check_interval=2", f"data.test_file={DEMO_PAIRS}",
        "data.test_fraction=0",
    ]
    train(compose_config(overrides, run))
    return run


@pytest.mark.parametrize("source", ["model", "checkpoints/last.ckpt"])
def test_evaluate_repeats_the_runs_test_numbers(tiny_run, tmp_path, source):
    # the run tested its best checkpoint; with max_steps=4 and validation every 2 steps, last may
    # differ from best, so the export (the best) is compared exactly and last only for its keys
    cfg = compose_evaluate_cfg([f"model.source={tiny_run / source}", f"data.test_file={DEMO_PAIRS}"], tmp_path)
    metrics = evaluate(cfg)
    assert set(metrics) == ALL_TEST
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    if source == "model":
        trained = json.loads((tiny_run / "metrics.json").read_text())
        assert metrics == pytest.approx({k: trained[k] for k in ALL_TEST}, abs=1e-5)


def test_model_shorthand_on_the_command_line(tiny_run, tmp_path):
    assert expand_model_shorthand(["x", "model=a/b", "model.pooling=cls"]) == ["x", "model.source=a/b", "model.pooling=cls"]
    result = subprocess.run(
        [sys.executable, "-m", "src.evaluate", f"model={tiny_run / 'model'}", f"data.test_file={DEMO_PAIRS}",
         f"hydra.run.dir={tmp_path / 'eval'}", f"paths.cache_dir={tmp_path / 'cache'}",
         "trainer.enable_progress_bar=false"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == ALL_TEST
    for view in VIEWS:  # a table per view, its main number in bold
        assert f"{view.title} ({view.evaluator}" in result.stdout
        assert f"| **{view.primary}** | **{metrics[f'test/{view.primary}']:.4f}** |" in result.stdout


@pytest.mark.slow
def test_minilm_on_hebnli_equals_sentence_transformers_evaluators(tmp_path, minilm_path, shared_hebnli):
    """All three views of the MiniLM folder on the shared HebNLI pairs, against sentence-transformers'
    evaluators on sentence-transformers' own embeddings of the same texts (encoded once). The folder has a Normalize module, which changes
    the manhattan/euclidean/dot numbers. Retrieval: the distinct premises with an entailed
    hypothesis are the queries, every distinct hypothesis the corpus (numbered by first appearance,
    the order ties rank in); classification: entailment vs contradiction."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import (
        BinaryClassificationEvaluator,
        EmbeddingSimilarityEvaluator,
        InformationRetrievalEvaluator,
    )

    # the first 600 pairs (about 200 premises): the real file's shape, a third of the encoding time
    sample = tmp_path / "hebnli_600.jsonl"
    sample.write_text("".join(shared_hebnli.read_text(encoding="utf-8").splitlines(keepends=True)[:600]), encoding="utf-8")
    cfg = compose_evaluate_cfg([f"model.source={minilm_path}", f"data.test_file={sample}"], tmp_path)
    ours = evaluate(cfg)

    label_map = resolve_label_map(cfg.data.label_map, cfg.data.label_maps)
    pairs = read_pairs(sample, PairColumns(**cfg.data.columns), label_map)
    texts = list(dict.fromkeys(pairs.sentence1 + pairs.sentence2))
    embeddings = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, batch_size=64, convert_to_tensor=True)
    model = FrozenEmbeddings(dict(zip(texts, embeddings)))
    theirs = EmbeddingSimilarityEvaluator(
        pairs.sentence1, pairs.sentence2, pairs.score, batch_size=64,
        similarity_fn_names=["cosine", "manhattan", "euclidean", "dot"],
    )(model)
    for name in METRIC_NAMES:
        assert ours[f"test/{name}"] == pytest.approx(theirs[name], abs=1e-4), name

    query_ids, document_ids = distinct_text_ids(pairs.sentence1), distinct_text_ids(pairs.sentence2)
    relevant: dict[int, set[int]] = {}
    for query, document, label in zip(query_ids, document_ids, pairs.label):
        if label == "entailment":
            relevant.setdefault(query, set()).add(document)
    retrieval = InformationRetrievalEvaluator(
        queries=dict(zip(query_ids, pairs.sentence1)), corpus=dict(zip(document_ids, pairs.sentence2)),
        relevant_docs=relevant, accuracy_at_k=[1], precision_recall_at_k=list(RECALL_AT), batch_size=64,
    )(model)
    kept = [i for i, label in enumerate(pairs.label) if label in ("entailment", "contradiction")]
    classification = BinaryClassificationEvaluator(
        [pairs.sentence1[i] for i in kept], [pairs.sentence2[i] for i in kept],
        [int(pairs.label[i] == "entailment") for i in kept], similarity_fn_names=["cosine"], batch_size=64,
    )(model)
    for view, results in (("retrieval", retrieval), ("classification", classification)):
        for name in (n for n in ours if n.startswith(f"test/{view}_")):
            assert ours[name] == pytest.approx(results["cosine_" + name.removeprefix(f"test/{view}_")], abs=1e-6), name
