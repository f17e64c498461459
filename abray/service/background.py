"""`abray serve --detach` and `abray serve --stop`: the service as a background process, and stopping it with the
local Ray head it started (and nothing else).

A running `abray serve` records itself in its storage folder (serve.json: pid and URL), in the foreground or
detached, so `--stop` finds it either way; the local head records itself in ray_head.json (abray.service.cluster).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import httpx

from .cluster import head_record, stop_command, stop_local_head

SERVER_RECORD = "serve.json"
LOG = "serve.log"


def record_server(storage: Path, url: str) -> Callable[[], None]:
    """Note this process as the storage's service; returns what forgets it again (at exit)."""
    storage.mkdir(parents=True, exist_ok=True)
    record = storage / SERVER_RECORD
    record.write_text(json.dumps({"pid": os.getpid(), "url": url}))

    def forget() -> None:
        try:
            if json.loads(record.read_text()).get("pid") == os.getpid():
                record.unlink()
        except (OSError, ValueError):
            pass

    return forget


def _running_server(storage: Path) -> Optional[dict]:
    """The storage's recorded service, if its process still runs and is an `abray serve`."""
    try:
        known = json.loads((storage / SERVER_RECORD).read_text())
        cmdline = Path(f"/proc/{known['pid']}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError):
        return None
    words = [w.decode(errors="replace") for w in cmdline]
    return known if "serve" in words and any("abray" in w for w in words) else None


def start_background(argv: list[str], storage: Path, url: str, write: Callable[[str], None] = print,
                     timeout_s: float = 180.0) -> int:
    """Start `abray serve ARGV` in a session of its own, its output in STORAGE/serve.log; return 0 once its
    /health says ok, 1 if it exits or is not ready within `timeout_s` (with what its log says)."""
    running = _running_server(storage)
    if running:
        write(f"abray serve already runs for {storage} (pid {running['pid']}, {running['url']}); "
              f"`{stop_command(storage)}` stops it")
        return 1
    storage.mkdir(parents=True, exist_ok=True)
    log_path = storage / LOG
    start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "abray.cli", "serve", *argv], stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline, health = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline and child.poll() is None:
        try:
            answer = httpx.get(f"{url}/health", timeout=2)
            health = answer.json()
            if answer.status_code == 200:
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    new_lines = log_path.read_bytes()[start:].decode(errors="replace").splitlines()
    if child.poll() is not None:
        write(f"abray serve exited (code {child.returncode}); its log ({log_path}) ends:\n  "
              + "\n  ".join(new_lines[-15:]))
        return 1
    for line in new_lines:  # the token (printed once, at the first start) and the Ray head the service started
        if "abray API token" in line or "local Ray head" in line:
            write(line)
    if health is None or health.get("status") != "ok":
        write(f"abray serve (pid {child.pid}) is not ready after {timeout_s:g} s; /health says {health}; "
              f"its log: {log_path}")
        return 1
    write(f"abray serve runs in the background: {url} (dashboard {url}/dashboard), pid {child.pid}, log {log_path}; "
          f"`{stop_command(storage)}` stops it and its Ray head")
    return 0


STOPPED = "abray serve --stop ended the service and the Ray head its jobs ran on"


def cancel_head_jobs(address: str, write: Callable[[str], None] = print) -> int:
    """End the drivers of the jobs running on the local head at `address`, which is about to end under them (and no
    service is left to notice the drivers fail), and mark each job cancelled in its database, saying why. Jobs on
    another cluster are left alone. Returns how many jobs were marked."""
    from sqlalchemy.exc import SQLAlchemyError

    from . import processes, store

    drivers = processes.drivers_on(address)
    for pid, _, _ in drivers:
        processes.kill_driver(pid)
    cancelled = 0
    for database in sorted({url for _, _, url in drivers}):
        jobs = [job for _, job, url in drivers if url == database]
        try:
            engine = store.connect(database)
            try:
                with store.session_factory(engine).begin() as session:
                    cancelled += sum(store.finish(session, job, "cancelled", STOPPED) for job in jobs)
            finally:
                engine.dispose()
        except (store.MissingDatabase, store.SchemaError, SQLAlchemyError, ValueError, ImportError) as err:
            write(f"job{'s' if len(jobs) > 1 else ''} {', '.join(map(str, jobs))} not marked cancelled: "
                  f"{str(err).splitlines()[0] if str(err) else type(err).__name__}; the service marks "
                  f"{'them' if len(jobs) > 1 else 'it'} failed when it starts again")
    if drivers:
        write(f"ended {len(drivers)} running job{'s' if len(drivers) > 1 else ''} on the head; "
              f"{cancelled} marked cancelled")
    return cancelled


def stop_service(storage: Path, write: Callable[[str], None] = print, grace_s: float = 30.0) -> bool:
    """Stop the storage's `abray serve` (SIGTERM, then SIGKILL after `grace_s`) and the local Ray head it
    started, nothing else; True if there was anything to stop. The jobs running on that head are cancelled first,
    their drivers ended; jobs on another cluster (RAY_ADDRESS's) go on."""
    running = _running_server(storage)
    if running:
        write(f"stopping abray serve (pid {running['pid']}, {running['url']})")
        os.kill(running["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _running_server(storage) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _running_server(storage):
            os.kill(running["pid"], signal.SIGKILL)
        (storage / SERVER_RECORD).unlink(missing_ok=True)
    head = head_record(storage)
    if head is not None:
        cancel_head_jobs(head["address"], write)
    address = stop_local_head(storage, write=write)
    if address is None:
        write(f"no local Ray head recorded in {storage} (the service ran on RAY_ADDRESS, or never started one)")
    return bool(running or address)
