"""Run store: exclusive claims (O_EXCL locks), stale-lock detection and reclaim, run status, failure records."""

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab.experiments import store
from cnnlab.experiments.store import RunLock, run_state


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(run_dir: Path, **fields) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"host": store.HOST, "pid": os.getpid(), "pid_start": store._pid_start(os.getpid()), "boot_id": store.BOOT_ID,
              "time": time.time(), "token": "t-" + str(fields.get("pid", "x")), "stale_after_s": 120}
    record.update(fields)
    path = run_dir / store.LOCK_NAME
    path.write_text(json.dumps(record))
    return path


def test_lock_is_exclusive_and_released(tmp_path):
    run = tmp_path / "run"
    lock = RunLock.acquire(run)
    assert lock is not None
    rec = json.loads((run / ".lock").read_text())
    assert rec["host"] == store.HOST and rec["pid"] == os.getpid() and rec["time"] <= time.time()
    assert RunLock.acquire(run) is None  # held by a live process (us)
    assert run_state(run).status == "running"
    lock.release()
    assert not (run / ".lock").exists()
    with RunLock.acquire(run) as again:
        assert again is not None and again.held()


def test_stale_lock_of_a_dead_process_is_detected_and_reclaimed(tmp_path):
    run = tmp_path / "run"
    write_lock(run, pid=dead_pid())
    st = run_state(run)
    assert st.status == "pending" and "interrupted" in st.detail
    lock = RunLock.acquire(run)
    assert lock is not None and lock.record["pid"] == os.getpid()
    lock.release()


def test_reused_pid_and_reboot_count_as_stale(tmp_path):
    write_lock(tmp_path / "a", pid_start=-5)  # our pid, but a different process start time
    assert run_state(tmp_path / "a").status == "pending"
    write_lock(tmp_path / "b", boot_id="another-boot")
    assert run_state(tmp_path / "b").status == "pending"
    write_lock(tmp_path / "c")  # really us
    assert run_state(tmp_path / "c").status == "running"


def test_other_host_lock_is_stale_only_without_heartbeat(tmp_path):
    run = tmp_path / "run"
    path = write_lock(run, host="elsewhere.cluster", pid=12345, stale_after_s=60)
    assert run_state(run).status == "running"
    assert RunLock.acquire(run) is None
    old = time.time() - 600
    os.utime(path, (old, old))
    assert run_state(run).status == "pending"
    assert RunLock.acquire(run) is not None


def test_empty_lock_gets_a_grace_period(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    path = run / store.LOCK_NAME
    path.write_text("")
    assert run_state(run).status == "running"  # a writer between create and write
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert run_state(run).status == "pending"


def test_heartbeat_refreshes_the_lock(tmp_path):
    lock = RunLock.acquire(tmp_path / "run", heartbeat_s=0.05)
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    deadline = time.time() + 10
    while lock.path.stat().st_mtime < old + 500 and time.time() < deadline:
        time.sleep(0.05)
    assert lock.path.stat().st_mtime > old + 500
    lock.release()


def _claim_all(root: str, n: int, worker: int, barrier) -> None:
    barrier.wait()
    for i in range(n):
        d = Path(root) / f"r{i}"
        lock = RunLock.acquire(d, heartbeat_s=60)
        if lock is None:
            continue
        try:
            if (d / "result.json").exists():
                continue
            with open(d / "claims.log", "a") as f:
                f.write(f"{worker}\n")
            (d / "result.json").write_text(json.dumps({"status": "completed", "worker": worker}))
        finally:
            lock.release()


@pytest.mark.parametrize("stale_first", [False, True])
def test_concurrent_workers_never_claim_a_run_twice(tmp_path, stale_first):
    n, workers = 40, 4
    if stale_first:  # every run starts with a stale lock of a dead process: workers race to reclaim it
        pid = dead_pid()
        for i in range(n):
            write_lock(tmp_path / f"r{i}", pid=pid, token=f"dead{i}")
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_claim_all, args=(str(tmp_path), n, w, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for i in range(n):
        claims = (tmp_path / f"r{i}" / "claims.log").read_text().split()
        assert len(claims) == 1, (i, claims)
        assert not (tmp_path / f"r{i}" / ".lock").exists()


def test_run_state_from_files(tmp_path):
    def make(name, files):
        d = tmp_path / name
        d.mkdir()
        for rel, text in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
        return d

    assert run_state(tmp_path / "nothing").status == "pending"
    assert run_state(make("done", {"result.json": json.dumps({"status": "completed", "epochs_completed": 3})})).status == "done"
    assert run_state(make("div", {"result.json": json.dumps({"status": "diverged"})})).status == "diverged"
    st = run_state(make("part", {"config.yaml": "x: 1", "checkpoints/last.pt": "x"}))
    assert (st.status, st.resumable) == ("pending", True)
    st = run_state(make("fail", {"failure.json": json.dumps({"status": "failed", "error": "ValueError: boom"})}))
    assert st.status == "failed" and "boom" in st.detail
    # a finished result wins over an old failure record; a live claim wins over a failure
    assert run_state(make("both", {"result.json": json.dumps({"status": "completed"}), "failure.json": "{}"})).status == "done"
    d = make("retrying", {"failure.json": json.dumps({"error": "x"})})
    write_lock(d)
    assert run_state(d).status == "running"


def test_failure_records_count_attempts(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    try:
        raise ValueError("first")
    except ValueError as e:
        rec = store.record_failure(d, e, index=3)
    assert rec["attempts"] == 1 and rec["error"] == "ValueError: first" and rec["index"] == 3
    assert "raise ValueError" in (d / "traceback.txt").read_text()
    store.clear_failure(d)
    assert run_state(d).status == "pending"
    rec = store.record_failure(d, RuntimeError("second"))
    assert rec["attempts"] == 2 and run_state(d).status == "failed"
