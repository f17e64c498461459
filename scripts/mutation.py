"""Mutation testing of abray's core with mutmut 3: each module's mutants run against its fast unit tests, and the
share of mutants the tests kill is printed per module, with every survivor's diff. Not part of `make test`.

    python scripts/mutation.py                 # every module, one after another
    python scripts/mutation.py staleness store # some of them
    python scripts/mutation.py --list          # the modules, their code and their tests
    python scripts/mutation.py --report        # the scores of the last run again, running nothing
    python scripts/mutation.py --survivors peers  # after adding tests: re-test only the mutants left alive

Each module runs in a scratch copy of the checkout (--workdir, default $TMPDIR/abray-mutation/<module>), so the
working tree gets no `mutants/` folder and two modules never share mutmut's state. mutmut keeps its results there:
a whole module's rerun re-tests only the mutants of functions whose code changed, so after changing *tests* pass
--fresh (the modules scored in part, store and parameter_server, are re-tested in full every time). The run is
niced, single-threaded, and uses one test process at a time (--jobs). Results, and why each survivor is an
equivalent mutant: docs/testing.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.90  # of a module's mutants killed


@dataclass(frozen=True)
class Module:
    source: str  # the file mutated
    tests: tuple[str, ...]  # the fast unit tests run against its mutants
    only: tuple[str, ...] = ("*",)  # mutant-name globs (module-relative) to run and score: a part of the module

    @property
    def dotted(self) -> str:
        return self.source[:-3].replace("/", ".")

    def patterns(self) -> list[str]:
        return [f"{self.dotted}.{pattern}" for pattern in self.only]

    def selection(self) -> list[str]:
        """What to name on mutmut's command line: nothing for a whole module (mutmut then skips mutants it has a
        result for), its part's patterns otherwise (mutmut re-tests every mutant it is given by name)."""
        return [] if self.only == ("*",) else self.patterns()


STATE_MACHINE = ("x__move__*", "x_claim__*", "x_set_driver__*", "x_heartbeat__*", "x_request_cancel__*", "x_finish__*",
                 "x_record_trial__*", "x_record_epoch__*", "x_close_trials__*", "x_epochs_reported__*",
                 "x_progress__*", "x_progress_of__*")

MODULES = {
    "staleness": Module("abray/optim/staleness.py", ("tests/optim/test_staleness.py",)),
    "delay_ring": Module("abray/training/delayed.py", ("tests/training/test_delay_ring.py",
                                                       "tests/optim/test_peers.py")),
    "schema": Module("abray/results/schema.py", ("tests/results/test_schema.py", "tests/results/test_summary.py")),
    "summary": Module("abray/results/summary.py", ("tests/results/test_summary.py",)),
    "store": Module("abray/service/store.py", ("tests/service/test_job_states.py", "tests/service/test_store.py"),
                    STATE_MACHINE),
    "peers": Module("abray/optim/peers.py", ("tests/optim/test_peers.py", "tests/optim/test_peers_by_hand.py")),
    "prediction": Module("abray/optim/prediction.py", ("tests/optim/test_peers.py",
                                                       "tests/optim/test_peers_by_hand.py")),
    "functional": Module("abray/optim/functional.py", ("tests/optim/test_absgd.py", "tests/optim/test_braking.py",
                                                       "tests/optim/test_absgd_kernel.py")),
    "absgd": Module("abray/optim/absgd.py", ("tests/optim/test_absgd.py", "tests/optim/test_braking.py",
                                             "tests/optim/test_absgd_kernel.py")),
    "parameter_server": Module("abray/training/parameter_server.py", ("tests/training/test_parameter_server.py",
                                                                      "tests/training/test_exchange.py",
                                                                      "tests/training/test_shards.py"),
                               ("xǁParameterServerStateǁ*",)),
}

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
NOT_RUN = {"not checked", "skipped", "check was interrupted by user"}


def checkout_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    return [f for f in listed if not f.endswith(".png") and (ROOT / f).is_file()]


def prepare(module: Module, workdir: Path, fresh: bool) -> None:
    """A copy of the checkout in `workdir` (kept between runs, for mutmut's incremental reruns), configured for
    this module alone."""
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name in checkout_files():
        target = workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != (ROOT / name).read_bytes():
            shutil.copy2(ROOT / name, target)
    config = {
        "source_paths": ["abray/"],
        "only_mutate": [module.source],
        "also_copy": ["api/", "dashboards/"],
        "pytest_add_cli_args_test_selection": list(module.tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", "-m", "not slow"],
        # a mutant that loops for ever is stopped after 10x its tests' time, counted in CPU seconds of its one
        # thread (mutmut's default, 30x, lets one that hangs the optimizer's tests run for 20 minutes)
        "timeout_multiplier": 5.0,
    }
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = "\n[tool.mutmut]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in config.items())
    (workdir / "pyproject.toml").write_text(pyproject + section)


def run(module: Module, workdir: Path, jobs: int, names=None) -> None:
    # the copy's own code, never the checkout's: no PYTHONPATH into the checkout, and mutmut puts mutants/ first
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # one thread per test process: torch's thread pools would count their CPU time against the mutant's limit
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    chosen = module.selection() if names is None else names
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *chosen]
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"mutmut failed ({done.returncode}) in {workdir}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def statuses(module: Module, workdir: Path) -> dict[str, str]:
    """Each mutant of the module's selected part -> mutmut's status for it."""
    from mutmut.stats import status_by_exit_code

    meta = workdir / "mutants" / (module.source + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()
            if any(fnmatch.fnmatchcase(name, p) for p in module.patterns())}


def show(name: str, workdir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=workdir, env=env, capture_output=True,
                          text=True)
    return "\n".join(line for line in done.stdout.splitlines() if line.startswith(("+", "-")) and
                     not line.startswith(("+++", "---")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"default: all of {', '.join(MODULES)}")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "abray-mutation")
    parser.add_argument("--jobs", type=int, default=1, help="test processes at once (default 1)")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results (needed after changing tests)")
    parser.add_argument("--survivors", action="store_true",
                        help="after the run, test the mutants left alive again (after new tests: faster than --fresh)")
    parser.add_argument("--list", action="store_true", help="list the modules and exit")
    parser.add_argument("--report", action="store_true", help="print the scores of the last run, running nothing")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"no module {', '.join(unknown)}; the modules are {', '.join(MODULES)}")
    if args.list:
        for name, module in MODULES.items():
            part = "" if module.only == ("*",) else f" (mutants {', '.join(module.only)})"
            print(f"{name:17} {module.source}{part}\n{'':17} tests: {' '.join(module.tests)}")
        return 0
    os.nice(10)
    rows, survivors = [], []
    for name in args.modules or list(MODULES):
        module, workdir = MODULES[name], args.workdir / name
        if not args.report:
            print(f"{name}: mutating {module.source} against {' '.join(module.tests)}", flush=True)
            prepare(module, workdir, args.fresh)
            run(module, workdir, args.jobs)
            left = [k for k, s in statuses(module, workdir).items() if s not in KILLED | NOT_RUN]
            if args.survivors and left:
                run(module, workdir, args.jobs, left)
        found = statuses(module, workdir)
        done = {k: s for k, s in found.items() if s not in NOT_RUN}
        killed = sum(s in KILLED for s in done.values())
        rows.append((name, len(done), killed, len(done) - killed, killed / len(done) if done else float("nan")))
        survivors += [(name, k, s) for k, s in sorted(done.items()) if s not in KILLED]
    print(f"\n{'module':17} {'mutants':>7} {'killed':>7} {'left':>5} {'score':>7}")
    for name, total, killed, left, score in rows:
        print(f"{name:17} {total:7} {killed:7} {left:5} {score:7.1%}{'' if score >= TARGET else '  < target'}")
    for name, mutant, status in survivors:
        print(f"\n{status}: {mutant}\n{show(mutant, args.workdir / name)}")
    return 0 if all(score >= TARGET for *_, score in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
