"""In-batch-negatives data: (premise, entailed hypothesis, same premise's contradiction) triplets
built from NLI pairs for training, while validation stays on scored pairs."""
import datasets
import pytest

from src.data.batching import PairCollator
from src.data.datamodule import PairDataModule
from src.data.tokenized import TokenizedPairs
from src.data.triplets import nli_triplets
from src.errors import UserInputError
from tests.helpers import write_jsonl
from tests.test_data import LABEL_MAPS, row, write_jsonl


def tokenized(rows: list[tuple[str, str, list[int], list[int]]]) -> datasets.Dataset:
    """A tokenized split as the data module holds it: (group, label, premise ids, hypothesis ids)."""
    return datasets.Dataset.from_dict({
        "group": [g for g, *_ in rows],
        "label": [label for _, label, *_ in rows],
        "input_ids_a": [a for *_, a, _ in rows],
        "input_ids_b": [b for *_, b in rows],
        "max_length": [max(len(a), len(b)) for *_, a, b in rows],
    })


def test_triplets_pair_each_entailment_with_its_premises_contradiction():
    pairs = tokenized([
        ("p1", "neutral", [1], [10]),
        ("p1", "entailment", [1], [11]),
        ("p1", "contradiction", [1], [12, 12, 12, 12]),
        ("p2", "entailment", [2], [21]),                 # no contradiction: no hard negative
        ("p3", "contradiction", [3], [32]),              # no entailment: no triplet
        ("p4", "entailment", [4, 4], [41]),
        ("p4", "entailment", [4, 4], [42]),              # both entailments share the contradiction
        ("p4", "contradiction", [4, 4], [43]),
        ("p4", "contradiction", [4, 4], [44]),
    ])
    triplets = nli_triplets(pairs, positive="entailment", negative="contradiction")
    assert triplets["input_ids_a"] == [[1], [2], [4, 4], [4, 4]]
    assert triplets["input_ids_b"] == [[11], [21], [41], [42]]
    assert triplets["input_ids_c"] == [[12, 12, 12, 12], [], [43], [43]]
    assert triplets["max_length"] == [4, 1, 2, 2]  # the hard negative counts for length grouping


def test_no_positive_label_is_named():
    pairs = tokenized([("p1", "neutral", [1], [2])])
    with pytest.raises(UserInputError, match=r"triplet_labels.positive: no training pair is labelled 'entailment'"):
        nli_triplets(pairs, positive="entailment", negative="contradiction")


def test_collator_leaves_out_missing_hard_negatives():
    collate = PairCollator(pad_token_id=0)
    batch = collate({"input_ids_a": [[1, 2], [3]], "input_ids_b": [[4], [5]], "input_ids_c": [[], [6, 7]],
                     "index": [0, 1]})
    assert "score" not in batch
    assert batch["input_ids_c"].tolist() == [[6, 7]]  # only the row that has one
    no_negatives = collate({"input_ids_a": [[1]], "input_ids_b": [[4]], "input_ids_c": [[]], "index": [0]})
    assert "input_ids_c" not in no_negatives and "attention_mask_c" not in no_negatives


def test_datamodule_trains_on_triplets_and_validates_on_scored_pairs(tmp_path, tiny_bert):
    labels = ["entailment", "neutral", "contradiction"]
    rows = [row(s1=f"משפט {g}", s2=f"השערה {g} {label}", label=label, group=g)
            for g in range(40) for label in labels if not (g % 4 == 0 and label == "contradiction")]
    dm = PairDataModule(tokenizer=str(tiny_bert), max_seq_length=32, label_maps=LABEL_MAPS,
                        train_file=str(write_jsonl(tmp_path / "pairs.jsonl", rows)), val_fraction=0.25,
                        train_format="triplets", batch_size=8, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    train, val = dm.splits["train"], dm.splits["val"]
    assert len(train) == 30 and len(val) == 10 * 3 - sum(int(g) % 4 == 0 for g in set(val["group"]))
    tokenizer = dm.tokenizer
    premises = {tokenizer.decode(ids, skip_special_tokens=True) for ids in train["input_ids_a"]}
    assert not premises & {tokenizer.decode(ids, skip_special_tokens=True) for ids in val["input_ids_a"]}
    batches = list(dm.train_dataloader())
    assert sum(len(b["input_ids_a"]) for b in batches) == 30
    assert sum(len(b["input_ids_c"]) for b in batches if "input_ids_c" in b) == sum(map(bool, train["input_ids_c"]))
    assert 0 < sum(map(bool, train["input_ids_c"])) < 30
    assert all("score" not in b for b in batches)
    assert all({"score", "input_ids_b"} <= set(b) and "input_ids_c" not in b for b in dm.val_dataloader())
    assert set(TokenizedPairs(val)[0]) == {"input_ids_a", "input_ids_b", "score", "index"}
