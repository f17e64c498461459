"""The service tests' PostgreSQL: Debian's server (installed by scripts/test-deps.sh), started once per session in a
temporary folder on a free port; each test that asks for `postgres_url` gets a database of its own."""

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from abray.service.cluster import free_port


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; Debian's package makes the postgres user
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_server():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL's server is not installed: run scripts/test-deps.sh (make test does)"
    bin_dir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="abray-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "abray", "--no-sync"]),
                   check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                                 "-w", "start"]), check=True, capture_output=True)
    try:
        yield {"bin": bin_dir, "port": port, "names": itertools.count()}
    finally:
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A new, empty database on the session's PostgreSQL server."""
    name = f"abray{next(postgres_server['names'])}"
    subprocess.run(_as_postgres([str(postgres_server["bin"] / "createdb"), "-h", "127.0.0.1", "-p",
                                 str(postgres_server["port"]), "-U", "abray", name]), check=True, capture_output=True)
    return f"postgresql://abray@127.0.0.1:{postgres_server['port']}/{name}"
