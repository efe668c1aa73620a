"""Data preparation at the reference's scale: 300,000 pairs, cold and cached.

    python benchmarks/data_prep.py [--pairs 300000]

Builds a pair file of `--pairs` rows by repeating ../shared/data/hebnli/HebNLI_val.jsonl, then
times, each in a fresh process, the data module's preparation (read, validate, tokenize with
MiniLM's fast tokenizer, write the Arrow cache, and load the splits) into an empty cache, and
again with the cache in place; prints wall time and peak RSS of each.
Writes benchmarks/results/data_prep.{json,md}.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.config import PROJECT_ROOT

SHARED = PROJECT_ROOT.parent / "shared" / "data" / "hebnli" / "HebNLI_val.jsonl"
RESULTS = Path(__file__).resolve().parent / "results"


def prepare(pairs_file: Path, cache_dir: Path) -> dict[str, float]:
    """Time the demo experiment's data module on `pairs_file`, the way `src.train` runs it.

    Library imports (torch, Lightning, datasets: several seconds on a busy 2-core machine, paid by
    any training run anyway) are timed apart from the preparation itself.
    """
    start = time.perf_counter()
    from hydra.utils import instantiate

    import src.data.datamodule  # noqa: F401
    from src.config import compose_config

    imported = time.perf_counter()
    cfg = compose_config(
        ["+experiment=demo", f"data.train_file={pairs_file}", "data.val_fraction=0", "data.test_fraction=0"],
        cache_dir.parent / "run",
    )
    cfg.paths.cache_dir = str(cache_dir)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return {
        "seconds": time.perf_counter() - imported,
        "import_seconds": imported - start,
        "rows": len(datamodule.splits["train"]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300_000)
    parser.add_argument("--distinct", action="store_true",
                        help="number the sentences of each copy, so no sentence repeats (the worst case)")
    parser.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(prepare(*args.worker)))
        return
    if not SHARED.is_file():
        sys.exit(f"error: the shared HebNLI sample is not at {SHARED}")
    lines = [line for line in SHARED.read_text(encoding="utf-8").splitlines() if line.strip()]
    results = {"pairs": args.pairs, "distinct": args.distinct}
    with tempfile.TemporaryDirectory(prefix="bench-data-prep-") as tmp:
        pairs_file = Path(tmp) / "pairs.jsonl"
        with pairs_file.open("w", encoding="utf-8") as f:
            for i in range(args.pairs):
                row = json.loads(lines[i % len(lines)])
                if args.distinct:
                    copy = i // len(lines)
                    row["translation1"] += f" {copy}"
                    row["translation2"] += f" {copy}"
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        results["file_mb"] = pairs_file.stat().st_size / 2**20
        for run in ("cold", "cached"):
            out = subprocess.run(
                [sys.executable, __file__, "--worker", str(pairs_file), str(Path(tmp) / "cache")],
                capture_output=True, text=True,
            )
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if out.returncode or line is None:
                sys.exit(f"error: the {run} run failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            results[run] = json.loads(line[len("RESULT "):])
            print(f"{run}: {results[run]['seconds']:.1f} s, peak RSS {results[run]['peak_rss_mb']:.0f} MB", flush=True)
    command = "python benchmarks/data_prep.py " + " ".join(sys.argv[1:])
    md = (
        f"`{command.strip()}` ({args.pairs:,} pairs, {results['file_mb']:.0f} MB of jsonl"
        f"{', every sentence distinct' if args.distinct else ''})\n\n"
        "| run | preparation (s) | library imports (s) | peak RSS (MB) |\n| --- | --- | --- | --- |\n"
        + "".join(f"| {run} | {results[run]['seconds']:.1f} | {results[run]['import_seconds']:.1f} "
                  f"| {results[run]['peak_rss_mb']:.0f} |\n"
                  for run in ("cold", "cached"))
    )
    RESULTS.mkdir(exist_ok=True)
    name = "data_prep_distinct" if args.distinct else "data_prep"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
