"""The run store: one directory per run, its status, exclusive claims (locks) and failure records.

A run is done only when the engine has written result.json (atomically). A worker claims a run by creating
``RUN_DIR/.lock`` with O_CREAT|O_EXCL (atomic on local filesystems and NFSv3+), holding host, pid, process
start time and boot id, and touches it while it trains (heartbeat). A lock is stale when its process is gone
(same host: pid dead or reused; other host: no heartbeat for ``stale_after_s``); stale locks are reclaimed
under a second exclusive guard file so two reclaimers can never both win.

A run is identified by its resolved config: ``run.json`` records it with its digest when a worker starts
the run (``config.yaml`` is the fallback for runs trained without the store). A run whose stored config
differs from the one asked for is ``stale``: never reported as done, never resumed, retrained only on request.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback as tb_mod
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cnnlab.engine.rundir import canonical, config_digest, describe_diff, saved_config
from cnnlab.utils.io import write_json_atomic, write_text_atomic

LOCK_NAME = ".lock"
GUARD_NAME = ".lock.reclaim"
RESULT_NAME = "result.json"
FAILURE_NAME = "failure.json"
PREVIOUS_FAILURE_NAME = "failure.prev.json"
TRACEBACK_NAME = "traceback.txt"
RUN_RECORD = "run.json"
RUN_FORMAT = "cnnlab-run-v1"
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"

STATUSES = ("done", "running", "failed", "diverged", "stale", "pending")
HEARTBEAT_S = 20.0
STALE_AFTER_S = 120.0
_EMPTY_LOCK_GRACE_S = 30.0  # a lock is created empty, then filled: give a writer this long
_GUARD_STALE_S = 60.0


@dataclass
class RunState:
    """Where one run stands: status (done|running|failed|diverged|pending) and a one-line detail."""

    status: str
    detail: str = ""
    resumable: bool = False
    lock: Optional[dict[str, Any]] = None
    failure: Optional[dict[str, Any]] = None
    result: Optional[dict[str, Any]] = field(default=None, repr=False)
    stored_digest: Optional[str] = None  # digest of the config the run directory holds (stale runs)


# ------------------------------------------------------------------------- identity of this process
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_start(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (killed, not yet reaped by its parent, e.g. a SIGKILLed worker of a
    ``sweep run`` still in progress) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


HOST = socket.gethostname()
BOOT_ID = _boot_id()


# ------------------------------------------------------------------------- reading state
def read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lock_is_stale(record: Optional[dict[str, Any]], mtime: float, now: Optional[float] = None) -> bool:
    """Whether a lock (its JSON record and file mtime) belongs to a process that is gone."""
    now = time.time() if now is None else now
    if record is None:  # being written, or its writer died between create and write
        return now - mtime > _EMPTY_LOCK_GRACE_S
    same_machine = record.get("host") == HOST and (not record.get("boot_id") or record.get("boot_id") == BOOT_ID)
    if record.get("host") == HOST and record.get("boot_id") and record.get("boot_id") != BOOT_ID:
        return True  # this machine rebooted since
    if same_machine:
        pid = int(record.get("pid", -1))
        if pid <= 0 or not _pid_alive(pid):
            return True
        start = record.get("pid_start")
        return start is not None and _pid_start(pid) not in (None, start)
    return now - mtime > float(record.get("stale_after_s", STALE_AFTER_S))


def write_run_record(run_dir: Path, config: dict[str, Any], **extra: Any) -> None:
    """Record the resolved config of the run about to be trained in ``run_dir`` (run.json)."""
    write_json_atomic(run_dir / RUN_RECORD, {"format": RUN_FORMAT, "digest": config_digest(config),
                                             "config": canonical(config), **extra})


def stored_run_config(run_dir: Path, names: Optional[set[str]] = None) -> Optional[dict[str, Any]]:
    """The config a run directory was trained with (run.json, else config.yaml), None if it holds none."""
    names = set(os.listdir(run_dir)) if names is None else names
    if RUN_RECORD in names:
        rec = read_json(run_dir / RUN_RECORD)
        if rec is not None and isinstance(rec.get("config"), dict):
            return rec["config"]
    if "config.yaml" in names:
        try:
            return saved_config(run_dir)
        except Exception:  # noqa: BLE001  (unreadable: treat as another config)
            return {"unreadable": "config.yaml"}
    return None


def _live_lock(run_dir: Path, names: set[str], now: Optional[float]) -> tuple[Optional[RunState], str]:
    """(a "running" state if a live process holds the run, else None; a note on an interrupted claim)."""
    if LOCK_NAME not in names:
        return None, ""
    lock_path = run_dir / LOCK_NAME
    try:
        mtime = lock_path.stat().st_mtime
    except FileNotFoundError:
        return None, ""
    record = read_json(lock_path)
    if not lock_is_stale(record, mtime, now):
        who = f"{record.get('host')}:{record.get('pid')}" if record else "a starting worker"
        return RunState("running", f"claimed by {who}", lock=record), ""
    return None, f"interrupted ({(record or {}).get('host', '?')}:{(record or {}).get('pid', '?')} is gone)"


def run_state(run_dir: Path, *, ignore_lock: bool = False, now: Optional[float] = None,
              expected: Optional[dict[str, Any]] = None) -> RunState:
    """The status of the run in ``run_dir`` from its files alone (cheap: one directory listing, small reads).

    ``expected``: the resolved config asked for (canonical dict); a run directory holding another one is
    ``stale`` (unless a live worker holds it: ``running``).
    """
    try:
        names = set(os.listdir(run_dir))
    except FileNotFoundError:
        return RunState("pending", "not started")
    if expected is not None:
        stored = stored_run_config(run_dir, names)
        if stored is not None and stored != expected:
            live = None if ignore_lock else _live_lock(run_dir, names, now)[0]
            if live is not None:
                return live
            return RunState("stale", f"trained under another config: {describe_diff(stored, expected, 3)}",
                            stored_digest=config_digest(stored))
    if RESULT_NAME in names:
        result = read_json(run_dir / RESULT_NAME) or {}
        status = result.get("status")
        if status == "completed":
            return RunState("done", f"{result.get('epochs_completed', '?')} epochs", result=result)
        if status == "diverged":
            return RunState("diverged", f"diverged after {result.get('epochs_completed', '?')} epochs", result=result)
    resumable = (run_dir / LAST_CHECKPOINT).exists() if "checkpoints" in names else False
    stale_note = ""
    if not ignore_lock:
        live, stale_note = _live_lock(run_dir, names, now)
        if live is not None:
            live.resumable = resumable
            return live
    if FAILURE_NAME in names:
        failure = read_json(run_dir / FAILURE_NAME) or {"error": "unreadable failure record"}
        return RunState("failed", str(failure.get("error", ""))[:200], resumable, failure=failure)
    if resumable:
        return RunState("pending", stale_note or "resumable from checkpoints/last.pt", True)
    return RunState("pending", stale_note or ("not started" if not names else "started, no checkpoint yet"))


# ------------------------------------------------------------------------- claiming
class RunLock:
    """An exclusive claim on one run directory. ``RunLock.acquire(dir)`` returns None if someone holds it."""

    def __init__(self, run_dir: Path, record: dict[str, Any]):
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self.record = record
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike, *, heartbeat_s: float = HEARTBEAT_S,
                stale_after_s: float = STALE_AFTER_S) -> Optional["RunLock"]:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {"host": HOST, "pid": os.getpid(), "pid_start": _pid_start(os.getpid()), "boot_id": BOOT_ID,
                  "time": time.time(), "token": uuid.uuid4().hex, "heartbeat_s": heartbeat_s,
                  "stale_after_s": stale_after_s}
        for _ in range(2):
            if _create_exclusive(run_dir / LOCK_NAME, json.dumps(record)):
                lock = cls(run_dir, record)
                lock._start_heartbeat(heartbeat_s)
                return lock
            if not _reclaim_if_stale(run_dir):
                return None
        return None

    def _start_heartbeat(self, interval: float) -> None:
        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._thread = threading.Thread(target=beat, name=f"lock-heartbeat-{self.run_dir.name}", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether the lock file on disk is still ours (a stale-reclaim by someone else would replace it)."""
        rec = read_json(self.path)
        return rec is not None and rec.get("token") == self.record["token"]

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create_exclusive(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _reclaim_if_stale(run_dir: Path) -> bool:
    """Remove ``run_dir``'s lock if it is stale, under an exclusive guard. True if the caller should retry."""
    lock_path, guard = run_dir / LOCK_NAME, run_dir / GUARD_NAME
    try:
        mtime = lock_path.stat().st_mtime
    except FileNotFoundError:
        return True  # released meanwhile
    seen = read_json(lock_path)
    if not lock_is_stale(seen, mtime):
        return False
    if not _create_exclusive(guard, json.dumps({"host": HOST, "pid": os.getpid(), "time": time.time()})):
        try:
            if time.time() - guard.stat().st_mtime > _GUARD_STALE_S:
                guard.unlink(missing_ok=True)  # a reclaimer died holding the guard
        except FileNotFoundError:
            pass
        return False
    try:
        try:
            mtime_now = lock_path.stat().st_mtime
        except FileNotFoundError:
            return True
        now_rec = read_json(lock_path)
        same = (now_rec or {}).get("token") == (seen or {}).get("token")
        if same and lock_is_stale(now_rec, mtime_now):
            lock_path.unlink(missing_ok=True)
            return True
        return False
    finally:
        guard.unlink(missing_ok=True)


# ------------------------------------------------------------------------- failures
def record_failure(run_dir: Path, exc: BaseException, *, index: Optional[int] = None) -> dict[str, Any]:
    """Write failure.json (+ traceback.txt) for a run that raised; counts attempts across retries."""
    prev = read_json(run_dir / PREVIOUS_FAILURE_NAME) or {}
    record = {
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "type": type(exc).__name__,
        "time": time.time(),
        "host": HOST,
        "pid": os.getpid(),
        "attempts": int(prev.get("attempts", 0)) + 1,
        "traceback": TRACEBACK_NAME,
    }
    if index is not None:
        record["index"] = index
    write_text_atomic(run_dir / TRACEBACK_NAME, "".join(tb_mod.format_exception(type(exc), exc, exc.__traceback__)))
    write_json_atomic(run_dir / FAILURE_NAME, record)
    return record


def clear_stale(run_dir: Path) -> list[str]:
    """Before retraining a stale run (``--rerun-stale``): delete what the old config produced in ``run_dir``
    (result, failure records, metrics log, checkpoints/*.pt, configs); never follows a link out of it."""
    from cnnlab.utils.io import safe_unlink

    removed = []
    for name in (RESULT_NAME, FAILURE_NAME, PREVIOUS_FAILURE_NAME, TRACEBACK_NAME, "metrics.jsonl", RUN_RECORD,
                 "config.yaml"):
        if safe_unlink(run_dir, name):
            removed.append(name)
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and not ckpts.is_symlink():
        for p in sorted(ckpts.glob("*.pt")):
            if safe_unlink(run_dir, p.relative_to(run_dir)):
                removed.append(str(p.relative_to(run_dir)))
    return removed


def clear_failure(run_dir: Path) -> None:
    """Before a retry: keep the last failure as failure.prev.json (for the attempt count)."""
    path = run_dir / FAILURE_NAME
    if path.exists():
        os.replace(path, run_dir / PREVIOUS_FAILURE_NAME)
