"""Writes that a reader never sees half done: a file or folder appears whole under its name, or not at all."""
import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_json(path: Path, payload: Any) -> None:
    """`payload` as indented UTF-8 JSON (Hebrew kept readable), written beside and renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def temporary_folder_for(folder: Path) -> Path:
    """An empty folder beside `folder` to build its new content in, for `replace_folder`."""
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished `tmp` to `folder`, replacing what was there."""
    if folder.exists():  # moved aside first: a directory rename cannot replace one
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)
