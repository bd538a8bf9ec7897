"""Atomic writes: a reader never sees a half-written file, a failure leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from planner.errors import PlanError


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_files(dest: Path, names: list[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success move `names` from it into `dest` (refusing to overwrite
    existing files unless `force`), on any error remove the staging folder and write nothing."""
    dest = Path(dest)
    if not force:
        clash = [n for n in names if (dest / n).exists()]
        if clash:
            raise PlanError(f"{dest / clash[0]} exists; pass --force to overwrite")
    dest.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".ftplan-", dir=dest))
    try:
        yield stage
        for n in names:
            os.replace(stage / n, dest / n)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
