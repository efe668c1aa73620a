import json

import numpy as np
import pytest

from src.data.datamodule import PairDataModule
from src.data.files import SIMILARITY_LABELS, PairColumns, read_pairs, resolve_label_map, split_by_group
from src.errors import UserInputError
from tests.helpers import DEMO_PAIRS, write_jsonl

LABEL_MAPS = {
    "similarity": SIMILARITY_LABELS,
    "seed": {"entailment": 0, "neutral": 1, "contradiction": 2},
    "float": "float",
}
COLUMNS = PairColumns()


def row(s1="שלום", s2="עולם", label="entailment", group=1) -> dict:
    return {"translation1": s1, "translation2": s2, "original_label": label, "promptID": group}


def test_label_maps_match_case_and_whitespace_insensitively(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [row(label="Entailment"), row(label=" NEUTRAL "), row(label="contradiction")])
    assert read_pairs(path, COLUMNS, resolve_label_map("similarity", LABEL_MAPS)).score == [1.0, 0.5, 0.0]
    assert read_pairs(path, COLUMNS, resolve_label_map("seed", LABEL_MAPS)).score == [0.0, 1.0, 2.0]


def test_float_labels_pass_through(tmp_path):
    path = write_jsonl(tmp_path / "sts.jsonl", [row(label=4.5), row(label="0.25")])
    assert read_pairs(path, COLUMNS, resolve_label_map("float", LABEL_MAPS)).score == [4.5, 0.25]


def test_unknown_labels_and_empty_texts_are_dropped_and_counted(tmp_path):
    rows = [row(), row(label="-"), row(s1=""), row(s2=None), row(label="neutral"), row(label="-")]
    table = read_pairs(write_jsonl(tmp_path / "a.jsonl", rows), COLUMNS, resolve_label_map("similarity", LABEL_MAPS))
    assert table.score == [1.0, 0.5]
    assert table.dropped == {"unknown label '-'": 2, "empty text": 2}


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"translation1": "a", "translation2": "b", "original_label": "entailment"}\n{"translation1": oops}\n',
         r"a\.jsonl: row 2: not valid JSON"),
        ('{"premise": "a", "translation2": "b", "original_label": "entailment"}\n',
         r"a\.jsonl: row 1: no column 'translation1' \(columns: premise, translation2, original_label\)"),
        ('{"translation1": "a", "translation2": "b", "original_label": "-"}\n',
         r"no label is in the label map \(found '-' x1"),
        ("", r"a\.jsonl: no usable rows"),
    ],
)
def test_bad_files_name_file_row_and_column(tmp_path, content, message):
    path = tmp_path / "a.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserInputError, match=message):
        read_pairs(path, COLUMNS, resolve_label_map("similarity", LABEL_MAPS))


def test_float_map_rejects_class_names(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [row(label=1.0), row(label="entailment")])
    with pytest.raises(UserInputError, match=r"row 2: column 'original_label': label 'entailment' is not a number"):
        read_pairs(path, COLUMNS, resolve_label_map("float", LABEL_MAPS))


def test_csv_and_parquet_read_like_jsonl(tmp_path):
    import pandas as pd

    frame = pd.DataFrame([row(), row(label="contradiction", group=2)])
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_parquet(tmp_path / "a.parquet")
    label_map = resolve_label_map("similarity", LABEL_MAPS)
    for name in ("a.csv", "a.parquet"):
        table = read_pairs(tmp_path / name, COLUMNS, label_map)
        assert table.score == [1.0, 0.0] and table.sentence1 == ["שלום", "שלום"]


def test_unknown_label_map_lists_known_ones():
    with pytest.raises(UserInputError, match="unknown label map 'nli'; known: similarity, seed, float"):
        resolve_label_map("nli", LABEL_MAPS)


def test_group_split_keeps_premises_together_and_is_seeded():
    groups = [str(i // 3) for i in range(300)]
    split = split_by_group(groups, {"val": 0.2, "test": 0.1}, seed=7)
    assert sum(len(v) for v in split.values()) == 300
    sides = {name: {groups[i] for i in idx} for name, idx in split.items()}
    assert not sides["train"] & sides["val"] and not sides["train"] & sides["test"] and not sides["val"] & sides["test"]
    assert len(sides["val"]) == 20 and len(sides["test"]) == 10
    again = split_by_group(groups, {"val": 0.2, "test": 0.1}, seed=7)
    assert all(np.array_equal(split[k], again[k]) for k in split)


def test_datamodule_carves_splits_and_caches_tokenization(tmp_path, tiny_bert):
    rows = [row(s1=f"משפט {g}", s2=f"השערה {g} {k}", label=lab, group=g)
            for g in range(40) for k, lab in enumerate(["entailment", "neutral", "contradiction"])]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    kwargs = dict(tokenizer=str(tiny_bert), max_seq_length=32, train_file=str(path), label_maps=LABEL_MAPS,
                  val_fraction=0.25, test_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    dm = PairDataModule(**kwargs)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 60, "val": 30, "test": 30}
    sizes = [len(batch["score"]) for batch in dm.train_dataloader()]
    assert sorted(sizes) == [12, 16, 16, 16]
    assert all(batch["input_ids_b"].shape[0] == len(batch["score"]) for batch in dm.val_dataloader())
    cached = list((tmp_path / "cache" / "tokenized").glob("*.arrow"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    PairDataModule(**kwargs).setup()
    assert cached[0].stat().st_mtime_ns == mtime  # reused, not rewritten


def test_missing_file_is_named(tmp_path):
    dm = PairDataModule(tokenizer="x", max_seq_length=8, train_file=str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserInputError, match=r"data.train_file: file not found: .*nope\.jsonl"):
        dm.prepare_data()


def test_pair_tokenizer_matches_the_fast_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    from src.data.tokenized import PairTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    rows = [json.loads(line) for line in DEMO_PAIRS.read_text(encoding="utf-8").splitlines()[:50]]
    batch = {"sentence1": [r["translation1"] for r in rows], "sentence2": [r["translation2"] for r in rows]}
    out = PairTokenizer(tokenizer, max_length=12)(batch)  # short, so truncation is exercised
    for column, key in (("sentence1", "input_ids_a"), ("sentence2", "input_ids_b")):
        assert out[key] == tokenizer(batch[column], truncation=True, max_length=12)["input_ids"]
    assert out["max_length"] == [max(len(a), len(b)) for a, b in zip(out["input_ids_a"], out["input_ids_b"])]


def test_a_truncated_cache_file_is_named_and_rebuilt(tmp_path, tiny_bert, caplog):
    path = write_jsonl(tmp_path / "pairs.jsonl", [row(s1=f"משפט {i}", group=i) for i in range(20)])
    kwargs = dict(tokenizer=str(tiny_bert), max_seq_length=32, train_file=str(path), label_maps=LABEL_MAPS,
                  cache_dir=str(tmp_path / "cache"))
    first = PairDataModule(**kwargs).load_split_file("train").to_dict()  # a copy: the dataset maps the file
    (cache,) = (tmp_path / "cache" / "tokenized").glob("*.arrow")
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # a write cut short
    with caplog.at_level("WARNING", logger="src.data"):
        again = PairDataModule(**kwargs).load_split_file("train")
    assert again.to_dict() == first
    (line,) = [r.getMessage() for r in caplog.records if "cache" in r.getMessage()]
    assert line.startswith(f"{cache}: unreadable tokenization cache (") and line.endswith("rebuilding it")
    assert PairDataModule(**kwargs).load_split_file("train")["score"] == first["score"]  # and good again


def test_a_named_split_file_wins_over_a_carve_fraction(tmp_path, tiny_bert, caplog):
    """`+experiment=demo data.val_file=dev.jsonl`: the demo carves val and test; the user's file is the val split."""
    train = write_jsonl(tmp_path / "train.jsonl", [row(s1=f"משפט {g}", group=g) for g in range(40)])
    val = write_jsonl(tmp_path / "dev.jsonl", [row(s1=f"אחר {g}", group=100 + g) for g in range(7)])
    with caplog.at_level("INFO", logger="src.data"):
        dm = PairDataModule(tokenizer=str(tiny_bert), max_seq_length=32, train_file=str(train), val_file=str(val),
                            label_maps=LABEL_MAPS, val_fraction=0.2, test_fraction=0.25, cache_dir=str(tmp_path / "c"))
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 30, "val": 7, "test": 10}
    assert f"data: the val split is data.val_file={val} (data.val_fraction=0.2 is not used)" in caplog.messages


def test_the_configs_similarity_map_is_the_codes(tmp_path):
    """conf/data/hebnli.yaml shows users the map; SIMILARITY_LABELS is the code's default: one fact."""
    from src.config import compose_config

    cfg = compose_config(["+experiment=demo"], tmp_path)
    assert dict(cfg.data.label_maps.similarity) == SIMILARITY_LABELS
