"""The arithmetic behind the benchmarks' figures (the benchmarks themselves are run by hand, not timed here)."""
import importlib.util

import src
from tests.conftest import DEMO_PAIRS



def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, src.PROJECT_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


vs_st = load_benchmark("vs_sentence_transformers")
objectives = load_benchmark("objectives")


def test_useful_flops_counts_the_encoder_layers_matmul_weights(tiny_bert):
    """6 FLOPs per weight of the layers' matmuls per token, plus attention's 12 * layers * width * length."""
    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(tiny_bert)
    matmul_weights = sum(
        m.weight.numel() for m in encoder.encoder.modules() if isinstance(m, torch.nn.Linear)
    )
    tokens, tokens_squared = 1_000, 30_000
    config = encoder.config
    attention = 12 * config.num_hidden_layers * config.hidden_size * tokens_squared
    assert vs_st.useful_flops(tiny_bert, tokens, tokens_squared) == 6 * matmul_weights * tokens + attention


def test_split_keeps_premises_apart_and_cycles_a_longer_train_part(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(vs_st, "SHARED", DEMO_PAIRS)  # the shipped demo file stands in for the shared one
    train, held_out = vs_st.write_split(tmp_path, train_pairs=1_000)
    train_rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    held_out_rows = [json.loads(line) for line in held_out.read_text(encoding="utf-8").splitlines()]
    assert len(train_rows) == 1_000  # more than the demo file holds: its train part, cycled
    distinct = {json.dumps(row, sort_keys=True) for row in train_rows}
    assert len(distinct) + len(held_out_rows) == len(DEMO_PAIRS.read_text(encoding="utf-8").splitlines())
    assert not {r["promptID"] for r in train_rows} & {r["promptID"] for r in held_out_rows}


def test_results_name_the_machine_they_were_measured_on():
    import torch

    info = vs_st.machine("cpu")
    assert info["cpu"]  # the model name, which the ratios depend on
    assert info["cpu_amx"] == str(torch.cpu._is_amx_tile_supported())
    assert info["torch"] == torch.__version__ and "gpu" not in info


def test_objectives_table_puts_held_out_spearman_and_ndcg_side_by_side():
    key = objectives.run_key
    runs = {key("base", None, None): {"metrics": {"val/spearman_cosine": 0.15}}}  # recorded before nDCG@10 was
    for lr, seed, spearman, ndcg in [(5e-5, 42, 0.2, 0.4), (2e-4, 42, 0.3, 0.5), (2e-4, 43, 0.1, 0.3)]:
        runs[key("cosent", lr, seed)] = {"metrics": {"val/spearman_cosine": spearman, "val/retrieval_ndcg@10": ndcg}}
    setup = {"train_pairs": 1597, "heldout_pairs": 402, "epochs": 3, "batch_size": 32, "max_seq_length": 128,
             "precision": "32-true"}
    rows, markdown = objectives.summarize({"runs": runs, "setup": setup}, [5e-5, 2e-4], [42, 43])
    assert "| objective | sentence-transformers loss | lr | seeds | held-out spearman_cosine | held-out retrieval_ndcg@10 |" in markdown
    assert "| base model (no training) | - | - | 1 | 0.1500 | - |" in markdown
    # the best rate by the first seed's Spearman (2e-4), over both seeds
    assert "| cosent | CoSENTLoss | 0.0002 | 2 | 0.2000 ± 0.1414 | 0.4000 ± 0.1414 |" in markdown
    assert rows[1]["retrieval_ndcg@10"] == [0.5, 0.3]
