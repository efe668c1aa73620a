"""The notebooks in notebooks/ run headless (nbclient, the venv's python3 kernel) on fast inputs
made here, and are committed with their outputs stripped."""
import json
import os
import sys

import nbformat
import pytest

from src.config import PROJECT_ROOT
from src.data.files import SIMILARITY_LABELS

NOTEBOOKS = PROJECT_ROOT / "notebooks"
RESULT = "notebook-result:"


def run_notebook(name: str, parameters: dict, result: str, monkeypatch) -> dict:
    """Execute notebooks/<name>.ipynb with `parameters` injected after its `parameters` cell (as
    papermill does), then evaluate `result` (a Python expression) in its kernel and return it."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, injected)
    nb.cells.append(nbformat.v4.new_code_cell(f"import json\nprint({RESULT!r}, json.dumps({result}))"))
    # the kernel imports this checkout's `src`, draws with Agg, and stays on one core
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    stdout = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    line = next(line for line in stdout.splitlines() if line.startswith(RESULT))
    return {"result": json.loads(line[len(RESULT):]), "nb": nb}


def _text(nb) -> str:
    """Everything the cells printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_committed_stripped_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "run `jupyter nbconvert --clear-output`"
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell holds the parameters"
    assert nb.metadata.kernelspec.name == "python3"


def test_kernel_is_this_python():
    """`python3` resolves to the interpreter running the tests (the venv), not a system python."""
    from jupyter_client.manager import KernelManager

    assert KernelManager(kernel_name="python3").format_kernel_cmd()[0] == sys.executable


def test_data_notebook(monkeypatch, tiny_bert):
    from transformers import AutoTokenizer

    from tests.helpers import DEMO_PAIRS

    rows = [json.loads(line) for line in DEMO_PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    longer = sorted(max(len(tokenizer(r["translation1"])["input_ids"]), len(tokenizer(r["translation2"])["input_ids"]))
                    for r in rows)
    max_len = longer[len(rows) // 2]  # truncates some pairs, not all
    too_long = sum(n > max_len for n in longer)
    run = run_notebook(
        "01_data",
        {"data_file": str(DEMO_PAIRS), "config": ["+experiment=demo", f"model.name_or_path={tiny_bert}",
                                                  f"model.max_seq_length={max_len}"]},
        '{"pairs": len(df), "labels": df["label"].value_counts().to_dict(), "truncated": n_truncated, '
        '"genres": int(genres.loc["total", "total"]), "max_seq_length": max_seq_length}',
        monkeypatch,
    )
    result = run["result"]
    assert result["max_seq_length"] == max_len
    assert result["pairs"] == len(rows) == result["genres"]
    assert result["labels"] == {label: sum(r["original_label"] == label for r in rows)
                                for label in ("entailment", "neutral", "contradiction")}
    assert 0 < result["truncated"] == too_long < len(rows)
    assert "truncates" in _text(run["nb"])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_bert):
    """A 2-job grid sweep of the demo on the tiny BERT, validating twice during training."""
    import subprocess

    root = tmp_path_factory.mktemp("notebook_sweep")
    result = subprocess.run(
        [sys.executable, "-m", "src.train", "-m", "+experiment=demo", f"model.name_or_path={tiny_bert}",
         "model.max_seq_length=64", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "trainer.max_steps=4", "trainer.val_check_interval=2",
         "data.eval_batch_size=32", "test=false", "model.lr=1e-4,5e-4",
         f"hydra.sweep.dir={root / 'sweep'}", f"paths.cache_dir={root / 'cache'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "sweep"


@pytest.mark.slow
def test_runs_notebook(monkeypatch, sweep):
    import pandas as pd

    # W&B is asked for, but there are no credentials: the notebook says so and carries on
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(sweep / "no-netrc"))
    run = run_notebook(
        "02_runs", {"runs_dir": str(sweep), "wandb_path": "someone/some-project"},
        '{"jobs": [str(j) for j in table["job"]], "best": str(best["job"]), "swept": swept, '
        '"points": {job: int(log[metric].notna().sum()) for job, log in curves.items()}}',
        monkeypatch,
    )
    result = run["result"]
    summary = pd.read_csv(sweep / "summary.csv")
    assert result["jobs"] == [str(j) for j in summary["job"]]
    assert result["best"] == str(summary["job"][0])
    assert result["swept"] == ["model.lr"]
    for job in ("0", "1"):
        log = pd.read_csv(sweep / job / "csv" / "metrics.csv")
        # validations at steps 2 and 4, then the final validation of the best checkpoint
        assert result["points"][job] == log["val/spearman_cosine"].notna().sum() >= 3
    text = _text(run["nb"])
    assert "W&B: skipped (no W&B credentials" in text
    assert f"best: {sweep / result['best']}" in text


@pytest.mark.slow
def test_embeddings_notebook(monkeypatch, sweep):
    import numpy as np
    import pandas as pd
    from sentence_transformers import SentenceTransformer

    from tests.helpers import DEMO_PAIRS

    model_dir = sweep / str(pd.read_csv(sweep / "summary.csv")["job"][0]) / "model"
    run = run_notebook(
        "03_embeddings", {"model_dir": str(model_dir), "data_file": str(DEMO_PAIRS), "n_worst": 4},
        '{"cosine": df["cosine"].tolist(), "diagonal": similarity.diagonal().tolist(), '
        '"classes": by_class.index.tolist(), "worst": worst["error"].tolist(), "neighbours": len(neighbours)}',
        monkeypatch,
    )
    result = run["result"]
    rows = [json.loads(line) for line in DEMO_PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    model = SentenceTransformer(str(model_dir), device="cpu")
    a = model.encode([r["translation1"] for r in rows[:5]])
    b = model.encode([r["translation2"] for r in rows[:5]])
    expected = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(result["cosine"][:5], expected, atol=1e-5)
    np.testing.assert_allclose(result["diagonal"], 1.0, atol=1e-5)
    assert result["classes"] == ["contradiction", "entailment", "neutral"]
    assert result["neighbours"] == 5
    # the most wrong pairs: the largest gaps between cosine and the label map's target, largest first
    targets = np.array([SIMILARITY_LABELS[r["original_label"]] for r in rows])
    gaps = np.sort(np.abs(np.array(result["cosine"]) - targets))[::-1]
    np.testing.assert_allclose(np.abs(result["worst"]), gaps[:4], atol=1e-6)
