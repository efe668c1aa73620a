"""One table per sweep: every job's overrides and final metrics, best first.

A Hydra callback (registered in conf/hydra/default.yaml) writes `summary.csv` and `summary.md`
into the sweep folder when a multirun ends, for grid sweeps and Optuna alike. It reads what the
jobs left on disk (`.hydra/overrides.yaml`, `metrics.json`), so it also works when the jobs ran
elsewhere (submitit, SLURM); a job without `metrics.json` is listed as failed, last.
"""
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    # job folders are numbered 0, 1, ..., 10: sort numerically where possible
    return sorted(dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def _overrides(job_dir: Path) -> dict[str, str]:
    pairs = (o.split("=", 1) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))
    return {key.lstrip("+~"): value for key, value, *_ in (p + [""] for p in pairs)}


def summarize_sweep(sweep_dir: Path, metric: str, maximize: bool = True) -> pd.DataFrame:
    """A row per job: `job`, its overrides (one column per key), `status`, then its metrics with
    `metric` first; sorted best first by `metric`, failed jobs last."""
    rows: list[dict[str, Any]] = []
    override_keys: dict[str, None] = {}  # ordered sets
    metric_keys: dict[str, None] = {}
    for job_dir in _job_dirs(sweep_dir):
        overrides = _overrides(job_dir)
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        override_keys.update(dict.fromkeys(overrides))
        metric_keys.update(dict.fromkeys(metrics))
        rows.append({"job": job_dir.name, **overrides, "status": "ok" if metrics else "failed", **metrics})
    if not rows:
        return pd.DataFrame()
    stages = {"val": 0, "test": 1}  # val/... before test/... before anything else
    others = sorted(metric_keys.keys() - {metric}, key=lambda k: (stages.get(k.split("/")[0], 2), k))
    columns = ["job", *override_keys, "status", metric, *others]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(metric, ascending=not maximize, na_position="last", kind="stable").reset_index(drop=True)


def to_markdown(table: pd.DataFrame, metric: str) -> str:
    """The table for reading: only the overrides that differ between jobs, and the optimized
    metric plus the Spearman correlations and retrieval nDCG@10 (the CSV holds everything)."""
    overrides = list(table.columns[1 : table.columns.get_loc("status")])
    swept = [c for c in overrides if table[c].nunique(dropna=False) > 1]
    common = [f"{c}={table[c].iloc[0]}" for c in overrides if c not in swept]
    metrics = [metric] + [c for c in table.columns if c != metric and c.endswith(("spearman_cosine", "spearman_max", "retrieval_ndcg@10"))]
    shown = table[["job", *swept, "status", *metrics]]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.4f}"
        return str(value)

    lines = [f"# Sweep summary: {len(table)} jobs, best first by `{metric}`", ""]
    if common:
        lines += ["Common overrides: " + " ".join(f"`{c}`" for c in common), ""]
    lines.append("| " + " | ".join(shown.columns) + " |")
    lines.append("|" + "---|" * len(shown.columns))
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def is_maximized(config: DictConfig) -> bool:
    """The Optuna sweeper's direction when there is one, else the best checkpoint's mode."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    if direction is not None:
        return "min" not in str(direction).lower()
    return OmegaConf.select(config, "callbacks.model_checkpoint.mode", default="max") != "min"


class SweepSummary(Callback):
    """Writes `summary.csv` and `summary.md` into the sweep folder at the end of a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        metric = config.get("optimized_metric", "val/spearman_cosine")
        try:
            table = summarize_sweep(sweep_dir, metric, is_maximized(config))
            if table.empty:
                log.warning("sweep summary: no jobs found under %s", sweep_dir)
                return
            table.to_csv(sweep_dir / "summary.csv", index=False)
            (sweep_dir / "summary.md").write_text(to_markdown(table, metric), encoding="utf-8")
        except Exception:  # a summary must never turn a finished sweep into a failure
            log.exception("sweep summary failed for %s", sweep_dir)
            return
        best = table.iloc[0]
        log.info("sweep summary: %s (best: job %s, %s=%s)", sweep_dir / "summary.md", best["job"], metric, best[metric])
