"""Which Ray cluster the job service runs on: the one at RAY_ADDRESS, or a local head that outlives the API.

`ray.init()` inside the API would tie the embedded cluster to the API process, and a restart would kill
every running job. So the service starts the local head as its own process (`ray start --head`, in a session of
its own), records it in the storage folder (ray_head.json), and reuses it after a restart while it still answers.

`stop_local_head` ends that head and only it, the way `ray stop` would end it: raylet first, then the other
processes (workers, dashboard, agents), then the GCS, each asked with SIGTERM before SIGKILL; then it forgets
the head in Ray's record of the machine's current cluster (`ray_current_cluster` in Ray's temp folder, which
`ray start` wrote and which `ray.init()` without an address reads), if that record still names it. A bare
`ray stop` would end every Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

HEAD_RECORD = "ray_head.json"


def answers(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_command(storage: Path) -> str:
    """The command that stops the service of `storage` and its local head."""
    return "abray serve --stop" + ("" if str(storage) == "runs/service" else f" --storage {storage}")


def head_record(storage: Path) -> Optional[dict]:
    """What ray_head.json says about this storage's local head (address, session, dashboard_url), if anything."""
    try:
        return json.loads((storage / HEAD_RECORD).read_text())
    except (OSError, ValueError):
        return None


def local_head(storage: Path, num_cpus: Optional[int] = None, write=print) -> str:
    """The address of this service's local Ray head, started now if it is not running."""
    known = head_record(storage)
    if known and answers(known["address"]):
        return known["address"]
    storage.mkdir(parents=True, exist_ok=True)
    port, dashboard_port = free_port(), free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    # with Ray's dashboard (on 127.0.0.1): it writes the Prometheus and Grafana files that the live-metrics
    # dashboard (dashboards/grafana) needs. Every port it would otherwise take by default is a free one, so
    # that this head starts next to any other Ray on the machine.
    cmd = [ray_cli, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    address = f"{_node_ip()}:{port}"
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    write(f"starting a local Ray head at {address} (Ray dashboard {dashboard_url}); it stays up across API "
          f"restarts, and `{stop_command(storage)}` ends it and nothing else")
    sys.stdout.flush()
    # its own session: stop_local_head finds this head's processes, and only them, by it
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, start_new_session=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stderr[-2000:]}")
    (storage / HEAD_RECORD).write_text(json.dumps({
        "address": address, "session": _session_of(port), "dashboard_url": dashboard_url,
        "address_file": _ray_address_file()}))
    return address


def _psutil():
    """Ray's own psutil, what `ray stop` uses: Ray vendors it and puts it on sys.path when imported."""
    import ray  # noqa: F401
    import psutil

    return psutil


def _session_of(port: int) -> Optional[int]:
    """The session id of the head whose GCS listens on `port`: `ray start` ran in a new session, and every
    process of the head (GCS, raylet, dashboard, agents, workers) stays in it."""
    psutil = _psutil()
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "gcs_server" and f"--gcs_server_port={port}" in (proc.info["cmdline"] or []):
            return os.getsid(proc.pid)
    return None


def _ray_address_file() -> str:
    """Ray's record of the machine's current cluster, where this process's environment (RAY_TMPDIR, TMPDIR)
    puts it: the file `ray start` writes and `ray.init()` reads."""
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def _head_processes(session: int) -> list:
    """The live processes of the head's session that are Ray's (a session id can be reused once the head is
    gone: then nothing here is Ray's, and nothing is ended)."""
    psutil = _psutil()
    if session == os.getsid(0):
        return []  # never our own session (that would be whoever ran us)
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) == session:
                words = " ".join([proc.info["name"] or "", *(proc.info["cmdline"] or [])])
                if "ray" in words:
                    found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return found


def _exited(psutil, p) -> bool:
    """Gone, or a zombie: it has exited and waits only for its parent (often init, for a head whose `ray start`
    has returned) to reap it, which on some systems happens seconds later."""
    try:
        return not p.is_running() or p.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return True


def _wait_exited(psutil, processes: list, timeout: float) -> list:
    """Wait until every process has exited (see `_exited`) or `timeout` passes; return those still running."""
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if not _exited(psutil, p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not _exited(psutil, p)]
    return alive


def _end(processes: list, grace_s: float) -> None:
    """`ray stop`'s order: raylet, then everything but the GCS, then the GCS; SIGTERM, then SIGKILL."""
    psutil = _psutil()
    def name(p):
        try:
            return p.name()
        except psutil.Error:
            return ""

    buckets = [[p for p in processes if name(p) == "raylet"],
               [p for p in processes if name(p) not in ("raylet", "gcs_server")],
               [p for p in processes if name(p) == "gcs_server"]]
    for bucket in buckets:
        for p in bucket:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        alive = _wait_exited(psutil, bucket, grace_s / len(buckets))
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        _wait_exited(psutil, alive, 2)


def _forget_current_cluster(address: str, address_file: str) -> bool:
    """Remove Ray's current-cluster record if it names this head (`ray stop` removes it whatever it names)."""
    host, _, port = address.rpartition(":")
    try:
        named = Path(address_file).read_text().strip()
    except OSError:
        return False
    named_host, _, named_port = named.rpartition(":")
    if named_port != port or named_host not in (host, "127.0.0.1", "localhost"):
        return False  # another cluster started since: leave it
    Path(address_file).unlink(missing_ok=True)
    return True


def stop_local_head(storage: Path, grace_s: float = 15.0, write: Callable[[str], None] = lambda line: None
                    ) -> Optional[str]:
    """End the local head that `local_head` started for this storage, and nothing else; return its address, or
    None when this storage records no head."""
    known = head_record(storage)
    if known is None:
        return None
    address = known["address"]
    session = known.get("session", known.get("process_group"))  # process_group: records of older versions
    processes = _head_processes(session) if session is not None else []
    write(f"stopping the local Ray head at {address} ({len(processes)} processes)")
    _end(processes, grace_s)
    _forget_current_cluster(address, known.get("address_file") or _ray_address_file())
    (storage / HEAD_RECORD).unlink(missing_ok=True)
    return address


def _node_ip() -> str:
    from ray.util import get_node_ip_address

    return get_node_ip_address()


def job_cluster(storage: Path, write=print) -> str:
    """RAY_ADDRESS when set; otherwise the local head (token authentication on, as `ray start` sets it)."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return address
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # what `ray start --head` enables; drivers inherit it
    return local_head(storage, write=write)
