"""The README's quickstart, replayed: its commands, in order, in one shell, against the live service they start, on
a copy of the repository as a clone holds it (the tracked files; no runs/, no .venv/). The commands are read from
README.md, so the two cannot drift apart.

Where the replay differs from a person's run, and why:
- `make demo`: the Makefile's demo recipe as `make -n` prints it, with this environment's Python for .venv's (the
  copy has none, and installing one is not this test's job) and 1 epoch a trial (its DEMO_FLAGS);
- `make test`: left out (it runs this very test);
- `source .venv/bin/activate`: this environment's own activate script;
- `--epochs 10`, and `epochs: 10` in the example spec: 1;
- `abray serve --detach`: on a free port, which ABRAY_URL tells the client, and with a Ray temp folder of its own,
  so that Ray's record of the machine's current cluster is this test's alone.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from abray.results.schema import CONFIG_COLUMNS, METRIC_COLUMNS
from abray.service.cluster import answers, free_port
from support import make

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a shell, Ray, the service
MARK = ":::quickstart:::"


def bare(command: str) -> str:
    """A quickstart line without its comment (which starts after two spaces or more)."""
    return re.sub(r"\s{2,}#.*$", "", command)


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def clone_of_repository(dest: Path) -> Path:
    """The files a clone has: git's tracked files (as they are in the working tree), else the tree without what
    runs and builds leave behind."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        for name in listed.stdout.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
    else:
        shutil.copytree(ROOT, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".venv", "runs", ".git", "__pycache__", ".pytest_cache"))
    return dest


def demo_recipe(repo: Path) -> list[str]:
    """`make demo`'s commands after the install, as make itself prints them."""
    recipe = make.dry_run(["-o", ".venv/.installed", "demo", f"PY={sys.executable}", "DEMO_FLAGS=--epochs 1"], repo)
    assert recipe and not any("pip install" in line or "-m venv" in line for line in recipe), recipe
    return recipe


def replayed(command: str, repo: Path, port: int) -> list[str]:
    """What the test runs for one quickstart command (see the module's docstring)."""
    if command.startswith("make demo"):
        return demo_recipe(repo)
    if command.startswith("make test"):
        return []
    if command.startswith("source .venv/bin/activate"):
        return [f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}"]
    command = command.replace("--epochs 10", "--epochs 1")
    if command.startswith("abray serve --detach"):
        command = command.replace("abray serve --detach", f"abray serve --detach --port {port}", 1)
    return [command]


def test_the_quickstart_runs_as_written(tmp_path):
    commands = quickstart_commands()
    assert [bare(c) for c in commands[:3]] == ["make demo", "make test", "source .venv/bin/activate"], commands
    assert len(commands) >= 8 and bare(commands[-1]) == "abray serve --stop"
    repo = clone_of_repository(tmp_path / "abray")
    assert not (repo / "runs").exists() and not (repo / ".venv").exists()
    spec = repo / "examples" / "sweep.yaml"
    assert "epochs: 10\n" in spec.read_text()
    spec.write_text(spec.read_text().replace("epochs: 10\n", "epochs: 1\n"))

    port = free_port()
    script = ["set -euo pipefail"]
    for command in commands:  # each command announced with the time it starts
        script.append(f"echo {MARK} $(date +%s.%N) {shlex.quote(command)}")
        script += replayed(command, repo, port)
    script.append(f"echo {MARK} $(date +%s.%N) done")
    ray_tmp = Path(tempfile.mkdtemp(prefix="abq", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items()
           if k not in ("ABRAY_TOKEN", "ABRAY_URL", "ABRAY_STORAGE", "ABRAY_DATABASE_URL", "RAY_ADDRESS", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(repo), RAY_TMPDIR=str(ray_tmp), ABRAY_URL=f"http://127.0.0.1:{port}")
    start = time.monotonic()
    try:
        done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=540)
    finally:
        if (repo / "runs" / "service" / "serve.json").exists() or (repo / "runs" / "service" / "ray_head.json").exists():
            subprocess.run([sys.executable, "-m", "abray.cli", "serve", "--stop", "--storage",
                            str(repo / "runs" / "service")], env=env, cwd=repo, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    took = time.monotonic() - start
    out = done.stdout
    marks = [line[len(MARK) + 1:].split(" ", 1) for line in out.splitlines() if line.startswith(MARK)]
    ran = [command for _, command in marks]
    assert done.returncode == 0 and ran == commands + ["done"], (
        f"the quickstart stopped at {ran[-1]!r} (exit {done.returncode}) after {took:.0f} s:\n"
        f"{out[-3000:]}\n{done.stderr[-3000:]}")

    assert "read them in Python: pandas.read_parquet(" in out  # the demo says how to load its results
    assert (repo / "runs" / "sweeps" / "demo" / "results.parquet").is_file()
    assert (repo / "runs" / "sweeps" / "quickstart" / "results.parquet").is_file()
    assert len(list((repo / "runs").glob("digits-ab-D8-seed0-*.csv"))) == 1
    assert f"abray serve runs in the background: http://127.0.0.1:{port}" in out
    assert re.search(r"job 1 \(quickstart\): succeeded, 4/4 done", out), out[-3000:]
    columns = 2 + len(CONFIG_COLUMNS) + len(METRIC_COLUMNS)  # the DataFrame: 4 trials of 1 epoch, job and trial ids
    assert f"[4 rows x {columns} columns]" in out
    assert "stopping the local Ray head at" in out
    assert not answers(f"127.0.0.1:{port}") and not (repo / "runs" / "service" / "ray_head.json").exists()
    for (start_s, command), (end_s, _) in zip(marks, marks[1:]):  # shown with -s: where the time goes
        print(f"{float(end_s) - float(start_s):6.1f} s  {bare(command)}")
    print(f"the quickstart took {took:.0f} s")
