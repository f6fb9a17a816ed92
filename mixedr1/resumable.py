"""How long jobs resume: append-only JSONL results, one file per rank, and atomic writes.

The data engine (`mixedr1.data_engine`) and `eval.py` write each finished item as one JSON line to
`<out stem>.<kind>.rank<R>.jsonl`, flushed per batch. A rerun reads every rank's file (a run with
another world size may have written them) and does only what is missing. A kill can leave the last
line of a file without its newline: that line is ignored when read and cut before appending. Any
other line that is not a JSON object is an error naming the file and line (these files are written
only by the job itself). Final outputs are written to a `.tmp` file and renamed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import IO, Iterator


def rank_file(out: Path, kind: str, rank: int) -> Path:
    return out.parent / f"{out.stem}.{kind}.rank{rank}.jsonl"


def rank_files(out: Path, kind: str) -> list[Path]:
    """Every rank's file of `kind` next to `out`, in name order."""
    return sorted(out.parent.glob(glob.escape(out.stem) + f".{kind}.rank*.jsonl"))


def read_rank_files(out: Path, kind: str) -> Iterator[tuple[str, dict]]:
    """`("file:line", entry)` for every line of every rank's file, files in name order."""
    for path in rank_files(out, kind):
        lines = path.read_text(encoding="utf-8").split("\n")
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if line_no == len(lines):  # no newline after it: torn by a kill, done again
                    continue
                raise ValueError(f"{where}: not a JSON line; this file is written only by the job itself") from None
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected a JSON object")
            yield where, entry


def open_for_append(out: Path, kind: str, rank: int) -> IO[str]:
    """This rank's file, opened for appending after cutting a torn last line."""
    path = rank_file(out, kind, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a", encoding="utf-8")


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 16 MiB blocks (checkpoint manifests, build fingerprints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
