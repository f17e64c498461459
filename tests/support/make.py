"""`make -n` (a dry run: make prints the recipes and runs nothing), as a test can read it."""

import os
import subprocess
from pathlib import Path


def dry_run(args: list[str], cwd: Path) -> list[str]:
    """The recipe lines `make -n ARGS` prints in `cwd`.

    CI runs the suite from inside `make test`, so make's own variables (MAKEFLAGS, MAKELEVEL) reach the child: it
    would then print "make[1]: Entering directory" lines among the recipe. The child gets a clean make environment
    and --no-print-directory, so what it prints is the recipe alone, as a person's `make -n` shows it.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    done = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.strip()]
