"""Plain helpers the tests share (fixtures are in conftest.py)."""
import json
from pathlib import Path

from src.config import PROJECT_ROOT

SHARED_HEBNLI = PROJECT_ROOT.parent / "shared" / "data" / "hebnli" / "HebNLI_val.jsonl"
DEMO_PAIRS = PROJECT_ROOT / "data" / "demo" / "hebrew_pairs.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
