"""Which Ray cluster the job service runs on: the one at RAY_ADDRESS, or a local head that outlives the API.

`ray.init()` inside the API would tie the embedded cluster to the API process, and a restart would kill
every running job. So the service starts the local head as its own process (`ray start --head`), records
its address in the storage folder, and reuses it after a restart while it still answers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional


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


def local_head(storage: Path, num_cpus: Optional[int] = None, write=print) -> str:
    """The address of this service's local Ray head, started now if it is not running."""
    record = storage / "ray_head.json"
    if record.exists():
        known = json.loads(record.read_text())
        if answers(known["address"]):
            return known["address"]
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    # with Ray's dashboard (on 127.0.0.1): it writes the Prometheus and Grafana files that the live-metrics
    # dashboard (dashboards/grafana) needs
    cmd = [ray_cli, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1", "--disable-usage-stats"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    write(f"starting a local Ray head on port {port} (it stays up across API restarts; `ray stop` ends it)")
    # its own session: the head's processes share one process group, so stop_local_head ends this head only
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, start_new_session=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stderr[-2000:]}")
    address = f"{_node_ip()}:{port}"
    head = _process_group_of(port)
    record.write_text(json.dumps({"address": address, "process_group": head}))
    return address


def _process_group_of(port: int) -> Optional[int]:
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "gcs_server" and f"--gcs_server_port={port}" in (proc.info["cmdline"] or []):
            return os.getpgid(proc.pid)
    return None


def stop_local_head(storage: Path) -> bool:
    """End the local head that `local_head` started for this storage (and nothing else); True if there was one."""
    record = storage / "ray_head.json"
    if not record.exists():
        return False
    group = json.loads(record.read_text()).get("process_group")
    record.unlink()
    if group is None:
        return False
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


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
