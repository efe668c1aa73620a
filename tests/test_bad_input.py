"""Bad input, one test per case of the catalogue: each stops before any training step (before the
model loads, where the problem is in data or config) with one line naming the file, row, column
or key; `python -m src.train` prints that line and exits 1, with a traceback only under
HYDRA_FULL_ERROR=1."""
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from src.config import PROJECT_ROOT, compose_config
from src.data.files import SIMILARITY_LABELS, PairColumns, read_pairs, resolve_label_map
from src.errors import UserInputError, user_error_behind
from src.train import train
from tests.helpers import write_beir_folder, write_jsonl


def pair(i: int, label="entailment", s1=None, s2="השערה") -> dict:
    return {"translation1": s1 if s1 is not None else f"משפט {i}", "translation2": s2, "original_label": label,
            "promptID": i}


def good_rows(n: int = 30) -> list[dict]:
    return [pair(i, ["entailment", "neutral", "contradiction"][i % 3]) for i in range(n)]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the encoder's weights are loaded."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(AutoModel, "from_pretrained", fail)


def user_error(tmp_path: Path, tiny_overrides: list[str], *overrides: str) -> str:
    """The one-line message a run with these overrides stops with."""
    cfg = compose_config(tiny_overrides + list(overrides), tmp_path / "run")
    with pytest.raises(Exception) as info:
        train(cfg)
    error = user_error_behind(info.value)
    assert error is not None, f"not a user error: {info.value!r}"
    message = str(error)
    assert "\n" not in message
    return message


def run_cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, **kwargs,
    )


# -- the command line: one line and exit 1, a traceback only when asked -----------------------------

def test_cli_prints_one_line_and_exits_1_with_a_traceback_only_under_hydra_full_error(tmp_path, tiny_bert):
    args = ["-m", "src.train", "+experiment=demo", f"model.name_or_path={tiny_bert}", "model.max_seq_length=64",
            f"data.train_file={tmp_path / 'nope.jsonl'}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli(*args)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"error: data.train_file: file not found: {tmp_path / 'nope.jsonl'}"
    assert "Traceback" not in result.stderr
    debug = run_cli(*args, env={"HYDRA_FULL_ERROR": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UserInputError" in debug.stderr


# -- data ----------------------------------------------------------------------------------------------

def test_missing_data_file(tmp_path, tiny_overrides, no_model_load):
    message = user_error(tmp_path, tiny_overrides, f"data.train_file={tmp_path / 'missing.jsonl'}")
    assert message == f"data.train_file: file not found: {tmp_path / 'missing.jsonl'}"


def test_jsonl_line_that_does_not_parse_names_the_row(tmp_path, tiny_overrides, no_model_load):
    path = write_jsonl(tmp_path / "bad.jsonl", good_rows(5))
    path.write_text(path.read_text() + '{"translation1": "x", \n', encoding="utf-8")
    message = user_error(tmp_path, tiny_overrides, f"data.train_file={path}")
    assert message.startswith(f"{path}: row 6: not valid JSON")


def test_missing_column_lists_the_columns_that_exist(tmp_path, tiny_overrides, no_model_load):
    rows = [{"premise": r["translation1"], "translation2": r["translation2"], "original_label": "neutral"}
            for r in good_rows(5)]
    path = write_jsonl(tmp_path / "cols.jsonl", rows)
    message = user_error(tmp_path, tiny_overrides, f"data.train_file={path}")
    assert message == f"{path}: row 1: no column 'translation1' (columns: premise, translation2, original_label)"


def test_unknown_labels_are_dropped_and_counted_and_all_unknown_is_an_error(tmp_path, tiny_overrides,
                                                                           no_model_load, caplog):
    some = write_jsonl(tmp_path / "some.jsonl", good_rows(9) + [pair(9, "-"), pair(10, "-"), pair(11, "maybe")])
    with caplog.at_level(logging.WARNING):
        table = read_pairs(some, PairColumns(), SIMILARITY_LABELS)
    assert len(table.score) == 9
    assert table.dropped == {"unknown label '-'": 2, "unknown label 'maybe'": 1}
    assert "dropped" in caplog.text and "'-'" in caplog.text

    none = write_jsonl(tmp_path / "none.jsonl", [pair(0, "-"), pair(1, "-"), pair(2, "yes")])
    message = user_error(tmp_path, tiny_overrides, f"data.train_file={none}")
    assert message.startswith(f"{none}: column 'original_label': no label is in the label map (found '-' x2, 'yes' x1")


def test_empty_or_null_texts_are_dropped_and_counted(tmp_path):
    rows = good_rows(6) + [pair(6, s1=""), pair(7, s2="   "), {**pair(8), "translation2": None}]
    table = read_pairs(write_jsonl(tmp_path / "empty.jsonl", rows), PairColumns(), SIMILARITY_LABELS)
    assert len(table.score) == 6 and table.dropped == {"empty text": 3}


def test_float_map_with_non_numeric_labels(tmp_path, tiny_overrides, no_model_load):
    path = write_jsonl(tmp_path / "sts.jsonl", [pair(0, "4.5"), pair(1, "high")])
    message = user_error(tmp_path, tiny_overrides, f"data.train_file={path}", "data.label_map=float")
    assert message.startswith(f"{path}: row 2: column 'original_label': label 'high' is not a number")


def test_a_split_left_with_zero_rows(tmp_path, tiny_overrides, no_model_load):
    path = write_jsonl(tmp_path / "one_premise.jsonl", [pair(0), {**pair(1), "promptID": 0}])
    message = user_error(tmp_path, tiny_overrides, f"data.train_file={path}")
    assert message.startswith("data: the ") and "split has no rows" in message and "val_fraction=0.15" in message


def test_non_utf8_bytes_name_the_row(tmp_path, tiny_overrides, no_model_load):
    path = write_jsonl(tmp_path / "latin1.jsonl", good_rows(3))
    path.write_bytes(path.read_bytes() + '{"translation1": "caf\xe9"}\n'.encode("latin-1"))
    message = user_error(tmp_path, tiny_overrides, f"data.train_file={path}")
    assert message.startswith(f"{path}: row 4: bytes that are not UTF-8")


# -- config --------------------------------------------------------------------------------------------

def test_max_seq_length_above_the_position_limit(tmp_path, tiny_overrides, tiny_bert, no_model_load):
    message = user_error(tmp_path, tiny_overrides, "model.max_seq_length=512")
    assert message == f"model.max_seq_length: 512 is above '{tiny_bert}''s position limit of 128"
    assert not (tmp_path / "run" / "cache").exists()  # nothing was tokenized either


@pytest.mark.parametrize("override, needle", [
    ("model.learning_rate=1", "Key 'learning_rate' is not in struct"),
    ("model=no_such_model", "Could not find 'model/no_such_model'"),
])
def test_unknown_config_key_or_group_option_fails_in_hydra_before_heavy_imports(override, needle):
    result = run_cli("-X", "importtime", "-m", "src.train", "+experiment=demo", override)
    assert result.returncode != 0
    assert needle in result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "omegaconf" in imported  # the import log was read
    assert not imported & {"torch", "lightning", "transformers", "datasets"}


def test_unknown_pooling(tmp_path, tiny_overrides, no_model_load):
    message = user_error(tmp_path, tiny_overrides, "model.pooling=median")
    assert message.startswith("model.pooling: unknown pooling 'median'; choose one of mean, ")


@pytest.mark.parametrize("override, expected", [
    # negative or zero where a positive value is needed
    ("model.lr=-1", "model.lr: -1 is not a positive number"),
    ("data.batch_size=0", "data.batch_size: 0 is not a positive integer"),
    ("model.sentences_per_pass=0", "model.sentences_per_pass: 0 is not a positive integer, one of auto or null"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches: 0 is not a positive integer"),
    ("data.val_fraction=1.5", "data.val_fraction: 1.5 is not a number >= 0 and < 1"),
    ("loss.scale=-2", "loss.scale: -2 is not a positive number"),
    # an unknown choice
    ("data.train_format=quads", "data.train_format: unknown train_format 'quads'; choose one of pairs, triplets"),
    ("model.nonfinite_loss=ignore", "model.nonfinite_loss: unknown nonfinite_loss 'ignore'; choose one of error, skip"),
    # the wrong type
    ("data.batch_size=sixteen", "data.batch_size: 'sixteen' is not a positive integer"),
    ("model.normalize=maybe", "model.normalize: 'maybe' is not true or false"),
    ("seed=abc", "seed: 'abc' is not an integer"),
])
def test_a_bad_config_value_names_the_key_the_value_and_what_is_allowed(tmp_path, tiny_overrides, no_model_load,
                                                                        override, expected):
    message = user_error(tmp_path, tiny_overrides, "loss=cosent" if "loss.scale" in override else "seed=1", override)
    assert message == expected
    assert not (tmp_path / "run" / "cache").exists()  # nothing was read or tokenized


def test_unknown_label_map(tmp_path, tiny_overrides, no_model_load):
    message = user_error(tmp_path, tiny_overrides, "data.label_map=nli3")
    assert message == "data.label_map: unknown label map 'nli3'; known: similarity, seed, float"


def test_model_that_cannot_be_found_offline(tmp_path, tiny_overrides, no_model_load):
    message = user_error(tmp_path, tiny_overrides, "model.name_or_path=no-such-org/no-such-model")
    assert message.startswith("model.name_or_path: cannot load 'no-such-org/no-such-model'")
    assert "Hub is unreachable" in message and "local model folder" in message


# -- checkpoints ---------------------------------------------------------------------------------------

def test_corrupt_checkpoint(tmp_path, tiny_overrides, no_model_load):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(b"PK\x03\x04 not really a checkpoint")
    message = user_error(tmp_path, tiny_overrides, f"ckpt_path={path}")
    assert message.startswith(f"ckpt_path: {path} is not a readable checkpoint (")


def test_checkpoint_from_another_model(tmp_path, tiny_overrides, tiny_bert):
    path = tmp_path / "other.ckpt"
    other = {"encoder.transformer.embeddings.word_embeddings.weight": torch.zeros(100, 48), "head.weight": torch.zeros(2, 48)}
    torch.save({"state_dict": other, "global_step": 3}, path)
    message = user_error(tmp_path, tiny_overrides, f"ckpt_path={path}")
    assert re.match(
        rf"ckpt_path: {re.escape(str(path))} is from another model than model.name_or_path={re.escape(str(tiny_bert))}: "
        r"\d+ weights missing .*; 1 unexpected \(e.g. head.weight\); 1 of another shape "
        r"\(e.g. encoder.transformer.embeddings.word_embeddings.weight: \[100, 48\] vs \[\d+, 32\]\)",
        message,
    )


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json"])
def test_a_file_with_a_byte_order_mark_reads_as_its_columns(tmp_path, suffix):
    """Excel saves CSV with a UTF-8 byte-order mark; it used to become part of the first column's name."""
    rows = good_rows(6)
    path = tmp_path / f"pairs{suffix}"
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        lines = [sep.join(rows[0])] + [sep.join(str(v) for v in r.values()) for r in rows]
        text = "\n".join(lines) + "\n"
    elif suffix == ".json":
        text = json.dumps(rows, ensure_ascii=False)
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_bytes("\ufeff".encode() + text.encode())
    table = read_pairs(path, PairColumns(), resolve_label_map("similarity", {"similarity": SIMILARITY_LABELS}))
    assert table.sentence1 == [r["translation1"] for r in rows] and table.score == [1.0, 0.5, 0.0] * 2


# -- evaluation views and BEIR folders ---------------------------------------------------------------

def test_an_evaluation_split_without_positive_pairs(tmp_path, tiny_overrides, no_model_load):
    train_file = write_jsonl(tmp_path / "train.jsonl", good_rows(30))
    val_file = write_jsonl(tmp_path / "val.jsonl", [pair(i, ["neutral", "contradiction"][i % 2]) for i in range(6)])
    message = user_error(tmp_path, tiny_overrides, f"data.train_file={train_file}", f"data.val_file={val_file}",
                         "data.val_fraction=0", "data.test_fraction=0")
    assert message == (
        f"data.views.retrieval: the val split ({val_file}) has no pair labelled 'entailment' (found 'neutral' x3, "
        "'contradiction' x3); name its positive label in data.view_labels.positive, or set data.views.retrieval=false"
    )


def test_a_carved_split_without_negative_pairs(tmp_path, tiny_overrides, no_model_load):
    path = write_jsonl(tmp_path / "pairs.jsonl", [pair(i, ["entailment", "neutral"][i % 2]) for i in range(40)])
    message = user_error(tmp_path, tiny_overrides, f"data.train_file={path}", "data.views.retrieval=false")
    assert message.startswith(f"data.views.classification: the val split (carved from {path}) has no pair labelled "
                              "'contradiction' (found ")


def test_a_view_on_numeric_scores(tmp_path, tiny_overrides, no_model_load):
    path = write_jsonl(tmp_path / "sts.jsonl", [pair(i, str(i % 5)) for i in range(30)])
    message = user_error(tmp_path, tiny_overrides, f"data.train_file={path}", "data.label_map=float",
                         "data.views.retrieval=true")
    assert message == ("data.views.retrieval: needs positive pairs, but data.label_map='float' passes numeric scores, "
                       "not class labels; set data.views.retrieval=false")


def test_an_unknown_view(tmp_path, tiny_overrides, no_model_load):
    message = user_error(tmp_path, tiny_overrides, "+data.views.ranking=true")
    assert message == "data.views.ranking: unknown view; known: retrieval, classification"


@pytest.mark.parametrize("missing", ["qrels/test.tsv", "data.path"])
def test_a_beir_folder_missing_a_file_or_not_named(tmp_path, tiny_bert, missing):
    from src.evaluate import evaluate

    folder = write_beir_folder(tmp_path / "beir")
    (folder / "qrels" / "test.tsv").unlink()
    path = [f"data.path={folder}"] if missing != "data.path" else []
    cfg = compose_config([f"model.source={tiny_bert}", "data=beir", *path, "trainer.enable_progress_bar=false"],
                         tmp_path / "eval", config_name="evaluate")
    with pytest.raises(Exception) as info:
        evaluate(cfg)
    assert str(user_error_behind(info.value)) == (
        f"data.path: {folder} has no qrels/test.tsv (a BEIR folder holds corpus.jsonl, queries.jsonl and "
        "qrels/<split>.tsv)" if missing != "data.path" else
        "data.path: not set; name the BEIR folder to score (data.path=<folder>)"
    )


@pytest.mark.parametrize("qrel, message", [
    ("q0\tnope\t1", "row 2: column 'corpus-id': 'nope' is not an _id of corpus.jsonl"),
    ("nope\tdoc0\t1", "row 2: column 'query-id': 'nope' is not an _id of queries.jsonl"),
    ("q0\tdoc0\thigh", "row 2: column 'score': 'high' is not a number"),
])
def test_beir_qrels_naming_unknown_ids(tmp_path, qrel, message):
    from src.data.beir import read_beir

    folder = write_beir_folder(tmp_path / "beir")
    qrels = folder / "qrels" / "test.tsv"
    header, first, *rest = qrels.read_text(encoding="utf-8").splitlines()
    qrels.write_text("\n".join([header, first, qrel, *rest]) + "\n", encoding="utf-8")
    with pytest.raises(UserInputError) as info:
        read_beir(folder)
    assert str(info.value) == f"{qrels}: {message}"


def test_beir_corpus_rows_without_an_id_or_with_a_repeated_one(tmp_path):
    from src.data.beir import read_beir

    folder = write_beir_folder(tmp_path / "beir")
    corpus = folder / "corpus.jsonl"
    lines = corpus.read_text(encoding="utf-8").splitlines()
    corpus.write_text("\n".join(lines + [lines[0]]) + "\n", encoding="utf-8")
    with pytest.raises(UserInputError, match=rf"^{corpus}: row {len(lines) + 1}: _id 'doc0' is already the _id of row 1$"):
        read_beir(folder)
    corpus.write_text('{"text": "no id"}\n', encoding="utf-8")
    with pytest.raises(UserInputError, match=rf"^{corpus}: row 1: no field '_id' \(fields: text\)$"):
        read_beir(folder)
