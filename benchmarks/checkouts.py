"""A benchmark script run again with another checkout's abray, for `--compare-with`: same machine, same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_with_checkout(path: str, script: str, args: list[str], timeout: float) -> dict:
    """`python SCRIPT ARGS` with the abray of the checkout at `path` first on the path, in a process (and so a Ray)
    of its own; the last line it printed, read as JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([path, os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])
