"""Reading the files a user names (config.json, plan.json, calibration and device-fit files): the one way in.

Every input file is opened the same way, so that no file can hang, flood or crash ftplan:
- regular files only: the file is opened non-blocking and checked with fstat on the open descriptor, so a
  FIFO, a device (/dev/zero) or a socket is refused at once instead of blocking the reader or streaming
  without end (checking the path before opening would leave a window in which it can be swapped);
- at most `limit_bytes` (MAX_INPUT_BYTES unless said otherwise) are read, then the file is refused;
- the text is strict UTF-8;
- JSON is parsed without NaN or Infinity (neither is JSON: RFC 8259 section 6) and without numbers that
  overflow a float (`1e999`), nesting deeper than the parser's recursion limit, or integers longer than
  Python's digit limit (sys.get_int_max_str_digits, 4,300 by default): each is a PlanError, one line.

Any loader of a user's file should call `read_json_file(path, what=...)` and then check the object it gets
with planner.input_checks (types, ranges, finiteness) before using a value.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from planner.errors import PlanError

# config.json, plan.json, calibration and device-fit files are kilobytes; 16 MiB leaves room for any of them
MAX_INPUT_BYTES = 16 * 2**20


def _describe(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_bytes_file(path: Path | str, *, what: str, limit_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit_bytes`; anything else is a PlanError naming `what`."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise PlanError(f"{what} {path} does not exist (no such file)") from None
    except IsADirectoryError:
        raise PlanError(f"{what} {path}: cannot read: it is a directory, not a file") from None
    except OSError as exc:
        raise PlanError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    except ValueError:  # a NUL byte in the path
        raise PlanError(f"{what} {path!r}: not a usable path") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise PlanError(f"{what} {path}: cannot read: it is {_describe(mode)}, not a regular file")
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit_bytes:
                raise PlanError(f"{what} {path}: cannot read: it is larger than {limit_bytes:,} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise PlanError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_text_file(path: Path | str, *, what: str, limit_bytes: int = MAX_INPUT_BYTES) -> str:
    data = read_bytes_file(path, what=what, limit_bytes=limit_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"{what} {path}: cannot read: not UTF-8 text (byte {exc.start})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is not a finite number (it overflows a float)")
    return value


class JSONInputError(PlanError):
    """Text that is not strict JSON; `reason` says why without naming the input."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} is not valid JSON ({reason})")
        self.reason = reason


def parse_json(text: str | bytes, *, what: str) -> Any:
    """JSON -> Python without NaN/Infinity, float overflow, runaway nesting or over-long integers."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise JSONInputError(what, f"{exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise JSONInputError(what, "nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise JSONInputError(what, f"not UTF-8 text, byte {exc.start}") from None
    except ValueError as exc:  # NaN / Infinity / 1e999 (from the hooks above), or an integer past the digit limit
        raise JSONInputError(what, str(exc).split(";")[0].split("\n")[0]) from None


def read_json_file(path: Path | str, *, what: str, limit_bytes: int = MAX_INPUT_BYTES) -> Any:
    """A user's JSON file, read as `read_text_file` and parsed as `parse_json`."""
    text = read_text_file(path, what=what, limit_bytes=limit_bytes)
    return parse_json(text, what=f"{what} {path}")
