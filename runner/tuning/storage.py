"""Where a tune's studies live, how a worker survives a flaky database, and how a dead worker is noticed.

Storages (`--storage`):
- `memory`: this process only;
- any SQLAlchemy URL: `sqlite:///ftplan-tune.db` (the default; one machine), `postgresql://USER@HOST/DB`
  (SQLAlchemy's default psycopg 3 driver: the `tune` extra) or `mysql://...`: Optuna's RDBStorage,
  shared by every worker that reaches the server;
- `journal:PATH`: Optuna's JournalStorage over an append-only file (`JournalFileBackend` with
  `JournalFileOpenLock`, the O_EXCL lock Optuna documents for NFS), for clusters with a shared file
  system and no database server.

Liveness: a worker records a heartbeat (the trial system attr `ftplan:heartbeat`, wall-clock seconds)
every `heartbeat_s` while it measures; any worker that sees a RUNNING trial whose heartbeat (or, before
the first one, whose start) is older than `grace_s` marks it FAIL with the user attr
`reason = "worker lost"`. The state change is the storage's own compare-and-set (RDB: a row update
that refuses finished trials; journal: the first FAIL in the log wins), so exactly one worker reaps a
trial. The same scheme serves both backends (Optuna's own RDB heartbeat table is not in the journal);
nodes' clocks must agree to well within `grace_s` (NTP does).

Storage errors: every call through `retrying` is retried with exponential backoff (1, 2, 4, ... s,
capped at 15 s) for `retry_s` seconds in all; then a PlanError (one line, exit 2) says the storage
stayed unreachable.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from planner.errors import PlanError

DEFAULT_STORAGE = "sqlite:///ftplan-tune.db"
MEMORY_STORAGE = "memory"
JOURNAL_PREFIX = "journal:"
HEARTBEAT_ATTR = "ftplan:heartbeat"
WORKER_LOST = "worker lost"

T = TypeVar("T")


def _transient_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    return (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DisconnectionError,
            sqlalchemy.exc.TimeoutError, optuna.exceptions.StorageInternalError, OSError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def redact(text: str, url: str) -> str:
    """`text` without the password of `url` (postgresql://USER:PASSWORD@HOST/DB): every `USER:...@` of a URL
    in it, and the password itself wherever a driver's message repeats it, become `***`."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    out = re.sub(r"(\w[\w+.-]*://[^/\s:@]*:)[^@/\s]*@", r"\1***@", text)
    for secret in {password, unquote(password or "")} - {None, ""}:
        out = out.replace(secret, "***")
    return out


def new_sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names when it does not exist yet (opening the storage creates it), else None."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception:  # an unparsable URL is refused by open_storage with its own line
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    return None if path.exists() else path


@dataclass(frozen=True, kw_only=True)
class Retry:
    """Backoff for storage calls: `retry_s` seconds in all, waits doubling from 1 s up to 15 s."""

    url: str
    retry_s: float = 60.0

    def waits(self) -> Iterator[float]:
        spent, wait = 0.0, 1.0
        while spent + wait <= self.retry_s:
            yield wait
            spent += wait
            wait = min(2 * wait, 15.0)

    def call(self, fn: Callable[[], T], what: str) -> T:
        errors = _transient_errors()
        waits = self.waits()
        while True:
            try:
                return fn()
            except errors as exc:
                wait = next(waits, None)
                if wait is None:
                    tried = f"unreachable for {self.retry_s:.0f} s " if self.retry_s else ""
                    raise PlanError(redact(f"tune storage {self.url}: {tried}while {what}: {_first_line(exc)}",
                                           self.url)) from None
                time.sleep(wait)


def _journal(path: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    p = Path(path).expanduser()
    if not p.parent.is_dir():
        raise PlanError(f"cannot open tune storage journal:{path}: folder {p.parent} does not exist")
    return JournalStorage(JournalFileBackend(str(p), lock_obj=JournalFileOpenLock(str(p))))


def _rdb(url: str) -> optuna.storages.BaseStorage:
    engine_kwargs: dict[str, Any] = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                                     else {"pool_pre_ping": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def open_storage(url: str | None, retry_s: float = 60.0) -> tuple[optuna.storages.BaseStorage, str]:
    """The storage behind `url`, and the URL to show, without its password (retried while the server is
    unreachable)."""
    url = url or DEFAULT_STORAGE
    shown = redact(url, url)
    if url == MEMORY_STORAGE:
        return optuna.storages.InMemoryStorage(), url
    if url.startswith(JOURNAL_PREFIX):
        path = url[len(JOURNAL_PREFIX):]
        if not path:
            raise PlanError("--storage journal: needs a file path, e.g. journal:/shared/ftplan-tune.log")
        return Retry(url=url, retry_s=retry_s).call(lambda: _journal(path), "opening it"), url
    if "://" not in url:
        raise PlanError(f"--storage {shown!r} is not a database URL or journal:PATH: use sqlite:///PATH.db, "
                        f"postgresql://USER@HOST/DB, journal:PATH or '{MEMORY_STORAGE}'")
    # a database server may be restarting: retry; a local SQLite file either opens or does not
    retry = Retry(url=url, retry_s=0.0 if url.startswith("sqlite") else retry_s)
    for attempt in range(3):
        try:
            return retry.call(lambda: _rdb(url), "opening it"), shown
        except Exception as exc:  # sqlalchemy raises driver-specific types (ArgumentError, NoSuchModuleError, ...)
            first = _first_line(exc)
            # two processes creating the same new database race on its tables; the loser retries (the race
            # reaches here as a PlanError too: sqlite's OperationalError is one of the transient errors)
            if attempt < 2 and any(m in first for m in ("already exists", "UNIQUE constraint", "locked",
                                                        "duplicate key")):
                time.sleep(1.0)
                continue
            if isinstance(exc, PlanError):
                raise PlanError(redact(f"cannot open {exc}", url)) from None
            if "Failed to import DB access module" in first or "No module named" in first:
                first += " (install the PostgreSQL driver: pip install 'ftplan[tune]')"
            raise PlanError(redact(f"cannot open tune storage {url}: {first}", url)) from None
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- liveness

@contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int, interval_s: float, retry: Retry) -> Iterator[None]:
    """Record a heartbeat now and every `interval_s` until the block ends (a daemon thread)."""
    stop = threading.Event()

    def beat() -> None:
        storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    retry.call(beat, "recording a heartbeat")

    def loop() -> None:
        while not stop.wait(interval_s):
            # a missed beat is retried at the next interval; the grace period covers a few
            with suppress(Exception):
                beat()

    thread = threading.Thread(target=loop, name="ftplan-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval_s + 5)


def last_sign_of_life(t: FrozenTrial) -> float | None:
    beat = t.system_attrs.get(HEARTBEAT_ATTR)
    if beat is not None:
        return float(beat)
    return t.datetime_start.timestamp() if t.datetime_start is not None else None


def reap_lost(storage: optuna.storages.BaseStorage, study_id: int, grace_s: float,
              now: float | None = None) -> list[int]:
    """Mark FAIL ("worker lost") the RUNNING trials silent for longer than `grace_s`; the numbers reaped here."""
    now = time.time() if now is None else now
    reaped = []
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        seen = last_sign_of_life(t)
        if seen is None or now - seen <= grace_s:
            continue
        try:
            # the reason first: a finished trial takes no attributes (and two reapers write the same one)
            storage.set_trial_user_attr(t._trial_id, "reason", WORKER_LOST)
            storage.set_trial_user_attr(t._trial_id, "lost_after_s", round(now - seen, 1))
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another worker reaped it, or its own worker just finished
            continue
        reaped.append(t.number)
    return reaped
