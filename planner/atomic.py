"""Atomic writes: a reader never sees a half-written file, a failure leaves nothing behind.

An output that cannot be written (a read-only or missing place, a file where a folder should be, a folder
where a file should be, a full disk) is the user's to fix: a PlanError with one line, never a traceback.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from planner.errors import PlanError


def _cannot_write(where: Path, exc: OSError) -> PlanError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, FileExistsError | NotADirectoryError):
        reason = "a file stands where a folder is needed"
    elif isinstance(exc, IsADirectoryError):
        reason = "a folder stands where the file should go"
    return PlanError(f"cannot write {where}: {reason}")


def _make_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise PlanError(f"cannot write into {path}: it exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(path, exc) from None


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    _make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_files(dest: Path, names: list[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success move `names` from it into `dest` (refusing to overwrite
    existing files unless `force`), on any error remove the staging folder and write nothing."""
    dest = Path(dest)
    if not force:
        clash = [n for n in names if (dest / n).exists() or (dest / n).is_symlink()]
        if clash:
            raise PlanError(f"{dest / clash[0]} exists; pass --force to overwrite")
    folders = [n for n in names if (dest / n).is_dir()]
    if folders:  # --force replaces files, never a folder of the same name
        raise PlanError(f"cannot write {dest / folders[0]}: a folder stands where the file should go")
    created = not dest.exists()
    _make_dir(dest)
    try:
        stage = Path(tempfile.mkdtemp(prefix=".ftplan-", dir=dest))
    except OSError as exc:
        raise _cannot_write(dest, exc) from None
    moved = False
    try:
        try:
            yield stage
        except OSError as exc:
            raise _cannot_write(dest, exc) from None
        for n in names:
            try:
                os.replace(stage / n, dest / n)
            except OSError as exc:
                raise _cannot_write(dest / n, exc) from None
        moved = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not moved:  # a folder this call made for files that never came
            shutil.rmtree(dest, ignore_errors=True)
