"""AB across the task suite: defaults chosen on the selection tasks, claims reported on the others.

The suite is `abray.training.tasks.SUITE`: four selection tasks (digits and teacher, each with and without
BatchNorm) and five report tasks (MNIST-10k and the deep teacher, each with and without BatchNorm, and a
LayerNorm transformer on a sequence task). Base hyperparameters are `abray train`'s defaults (lr 0.03, batch 32,
momentum 0.9, 5 warmup epochs, cosine), the protocol a user starts from.

Parts (each under 15 minutes on 2 idle cores; raw results go to benchmarks/results/task_suite/PART.parquet and a
part that is interrupted resumes where it stopped):

  rule     selection, validation splits: the candidate braking rules at D = 32 (40 epochs) and, at D = 0, the
           short-run trap (15 epochs): constant rho (the old AB), rho tied to each update's staleness, the factor
           clipped at 0, rho warmed up with the lr, smaller lrs, the staleness-aware lr
  rule2    selection, validation splits: the leaders of `rule`, alone and combined, 3 seeds
  ramp     selection, validation splits: how fast braking grows with staleness (rho_ramp) at D in {1, 2, 4}
  ramp2    the same at D = 8 (15 and 40 epochs), and a ramp of 8
  harm     every task, test split: D = 0, 5 / 15 / 60 epochs, with and without warmup (and 15 epochs at batch 64):
           SGDM against AB, and the old AB at 5 and 15 epochs
  delay    report tasks, test split: D in {0, 8, 32}, 40 epochs, 3 seeds: SGDM, AB, the staleness-aware lr (the best
           peer on digits), AB with linear weight prediction and the old AB
  advisor  report tasks: the lr advisor's verdict checked by training at fractions and multiples of its lr
  tables   print every table from the Parquet files (no training) and write them as Parquet for the dashboard

    python benchmarks/task_suite.py PART [--workers 2] [--quick]

Figures in docs/when-ab-works.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results" / "task_suite"
SPEC_ONLY = ("id", "part", "task", "role", "rule", "variant", "split", "lr_scale", "lr_rule")  # not config fields
BASE = dict(lr=0.03, batch_size=32, momentum=0.9, warmup_epochs=5, schedule="cosine")


# --- candidate rules that are not ABSGD's own: benchmark-only optimizers ---------------------------------------
# (`clip` is the rule ABSGD adopted as clip_factor=True after the selection parts ran with this variant; their
# results stay those of this variant, which clips by a per-tensor rho instead of clamping the factor in the kernel.)

def _variant_optimizer(variant: str, config, params):
    """The optimizer of a candidate rule, or None for the registry's (`config.optimizer`)."""
    import torch

    from abray.optim import ABSGD, absgd, braking_strength, cosines

    class ClippedABSGD(ABSGD):
        """AB with the factor clipped at 0: max(0, 1 - rho c) g (tensor granularity)."""

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                rho = braking_strength(group["rho"], self.staleness, group["rho_ramp"])
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    g = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                    buf = self.state[p].get("momentum_buffer")
                    c = float(cosines([g], [buf], "tensor", group["eps"])[0])
                    bufs = [buf]
                    absgd([p], [p.grad], bufs, lr=group["lr"], momentum=group["momentum"],
                          weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                          rho=min(rho, 1.0 / c) if c > 0 else rho, granularity="tensor", eps=group["eps"],
                          foreach=False)
                    self.state[p]["momentum_buffer"] = bufs[0]

    class RhoWarmupABSGD(ABSGD):
        """AB whose rho rises with the lr during warmup: rho * (the largest lr / peak lr so far)."""

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                group["warmed"] = max(group.get("warmed", 0.0), group["lr"] / group["initial_lr"])
                group["rho"] = group["peak_rho"] * group["warmed"]
            return super().step(closure)

    kw = dict(lr=config.lr, momentum=config.momentum, rho=config.rho, granularity=config.granularity)
    if variant == "clip":
        return ClippedABSGD(params, rho_ramp=config.rho_ramp, **kw)
    if variant == "rho_warmup":
        opt = RhoWarmupABSGD(params, rho_ramp=0, clip_factor=False, **kw)
        for group in opt.param_groups:
            group["peak_rho"] = group["rho"]
            group["initial_lr"] = group["lr"]
        return opt
    return None


# --- one run ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _data(dataset: str, validation: bool):
    from abray.training.data import IN_MEMORY

    return IN_MEMORY[dataset](validation=validation)


@functools.lru_cache(maxsize=16)
def _top_eigenvalue(dataset, model, seed, validation):
    from abray.advisor import advise_config
    from abray.training.config import parse_config

    config = parse_config(dict(dataset=dataset, model=model, seed=seed))
    return advise_config(config, _data(dataset, validation)).top_eigenvalue


def _advice(dataset, model, seed, validation, delay, momentum, rho, rho_ramp, clip_factor):
    from abray.advisor import Advice, stable_edges

    edges = stable_edges(delay, momentum, rho, rho_ramp, clip_factor)
    return Advice(_top_eigenvalue(dataset, model, seed, validation), delay, momentum, rho, rho_ramp, clip_factor,
                  *edges)


def run_one(spec: dict) -> dict:
    """Train one spec (config values + `variant`, `lr_scale`, `split`) and return its result row."""
    import torch

    from abray.optim.methods import METHODS
    from abray.training.build import build_optimizer, make_scheduler
    from abray.training.config import parse_config
    from abray.training.models import build_model
    from abray.training.simulator import train_delayed

    torch.set_num_threads(1)
    values = {k: v for k, v in spec.items() if k not in SPEC_ONLY}
    config = parse_config(values)
    data = _data(config.dataset, spec["split"] == "validation")
    advised = None
    if spec.get("lr_rule") in ("advised", "advised_unclipped", "advised_scaled"):
        advised = _advice(config.dataset, config.model, config.seed, spec["split"] == "validation", config.delay,
                          config.momentum, config.rho, config.rho_ramp,
                          config.clip_factor and spec["lr_rule"] != "advised_unclipped").lr_for(config.optimizer)
        # "advised": the configured lr, lowered to the advised one; "advised_scaled": lr_scale times the advised
        lr = spec["lr_scale"] * advised if spec["lr_rule"] == "advised_scaled" else min(config.lr, advised)
        config = config.model_copy(update={"lr": lr})
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.num_classes)
    optimizer = _variant_optimizer(spec.get("variant", ""), config, model.parameters())
    optimizer = optimizer or build_optimizer(config, model.parameters())
    scheduler = make_scheduler(config, optimizer, len(data.train) // config.batch_size)
    start = time.perf_counter()
    history = train_delayed(model, optimizer, data, delay=config.delay, epochs=config.epochs,
                            batch_size=config.batch_size, seed=config.seed, scheduler=scheduler,
                            predict=METHODS[config.optimizer].predicts)
    last = history[-1]
    accuracy = float(last.test_accuracy) if not last.diverged else 1.0 / data.num_classes
    failed = last.diverged or accuracy < 2.0 / data.num_classes  # diverged, or collapsed to about chance
    return {**spec, "lr_used": config.lr, "advised_lr": advised, "accuracy": accuracy, "best_accuracy": max(m.test_accuracy for m in history),
            "diverged": bool(last.diverged), "failed": bool(failed), "first_train_loss": history[0].train_loss,
            "last_train_loss": last.train_loss, "seconds": time.perf_counter() - start,
            "curve": json.dumps([round(m.test_accuracy, 4) for m in history])}


def spec_id(spec: dict) -> str:
    return json.dumps({k: spec[k] for k in sorted(spec) if k not in ("id", "task", "role")}, sort_keys=True)


def run_part(part: str, specs: list[dict], workers: int) -> pd.DataFrame:
    """Run the specs not yet in the part's Parquet file, saving after each; return all the part's rows."""
    path = RESULTS / f"{part}.parquet"
    done = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    have = set(done["id"]) if len(done) else set()
    todo = [dict(s, part=part, id=spec_id(s)) for s in specs]
    todo = [s for s in todo if s["id"] not in have]
    print(f"{part}: {len(specs)} runs, {len(specs) - len(todo)} already done, {len(todo)} to run", flush=True)
    rows = done.to_dict("records") if len(done) else []
    start = time.time()
    if todo:
        RESULTS.mkdir(parents=True, exist_ok=True)
        with mp.get_context("spawn").Pool(workers) as pool:
            for i, row in enumerate(pool.imap_unordered(run_one, todo, chunksize=1)):
                rows.append(row)
                pd.DataFrame(rows).to_parquet(path, index=False)
                if (i + 1) % 10 == 0 or i + 1 == len(todo):
                    print(f"  {i + 1}/{len(todo)} runs, {time.time() - start:.0f} s", flush=True)
    return pd.DataFrame(rows)


def task_specs(tasks, split: str, **values) -> list[dict]:
    return [dict(t.config(**{**BASE, **values}), task=t.name, role=t.role, split=split) for t in tasks]


def grid(base: list[dict], **axes) -> list[dict]:
    """Every spec of `base` crossed with every combination of `axes` (name -> list of values or of dicts)."""
    out = base
    for name, values in axes.items():
        out = [dict(s, **(v if isinstance(v, dict) else {name: v})) for s in out for v in values]
    return out


# --- parts -----------------------------------------------------------------------------------------------------

RULES_AT_DELAY = {  # candidate rules at large delay: name -> config values (and variant)
    "sgdm": dict(optimizer="sgdm"),
    "ab const 1.5": dict(optimizer="ab", rho=1.5, rho_ramp=0.0, clip_factor=False),
    "ab ramp 1.0": dict(optimizer="ab", rho=1.0, rho_ramp=4.0, clip_factor=False),
    "ab ramp 1.5": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, clip_factor=False),
    "ab ramp 2.0": dict(optimizer="ab", rho=2.0, rho_ramp=4.0, clip_factor=False),
    "ab ramp 1.5 global": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, clip_factor=False, granularity="global"),
    "ab ramp 1.5 clip": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, variant="clip"),
    "ab ramp 3.0 clip": dict(optimizer="ab", rho=3.0, rho_ramp=4.0, variant="clip"),
    "ab ramp 1.5 lr/2": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, clip_factor=False, lr=0.015, lr_scale=0.5),
    "ab ramp 1.5 lr/4": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, clip_factor=False, lr=0.0075, lr_scale=0.25),
    "staleness_lr": dict(optimizer="staleness_lr"),
}
RULES_AT_ZERO = {  # the short-run trap at D = 0
    "sgdm": dict(optimizer="sgdm"),
    "ab const 1.5": dict(optimizer="ab", rho=1.5, rho_ramp=0.0, clip_factor=False),
    "ab const 1.5 clip": dict(optimizer="ab", rho=1.5, rho_ramp=0.0, variant="clip"),
    "ab rho warmup 1.5": dict(optimizer="ab", rho=1.5, variant="rho_warmup"),
    "ab ramp 1.5": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, clip_factor=False),
}


RULES_ROUND_TWO = {  # the leaders of `rule`, alone and combined, 3 seeds
    "sgdm": dict(optimizer="sgdm"),
    "ab ramp 1.5": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, clip_factor=False),
    "ab ramp 1.5 clip": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, variant="clip"),
    "ab ramp 1.5 advised lr": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, clip_factor=False, lr_rule="advised"),
    # (run when the advisor had no clipped edge: its lr is the advice for AB without clipping)
    "ab ramp 1.5 clip, unclipped advised lr": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, variant="clip",
                                                   lr_rule="advised_unclipped"),
    "ab ramp 1.5 lr/2": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, clip_factor=False, lr=0.015, lr_scale=0.5),
    "ab ramp 1.5 clip lr/2": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, variant="clip", lr=0.015, lr_scale=0.5),
}
RAMPS = {  # how fast braking grows with staleness, at small delays (with the factor clipped, as `rule2` chose)
    "sgdm": dict(optimizer="sgdm"),
    "ab clip ramp 1 (full from D = 1)": dict(optimizer="ab", rho=1.5, rho_ramp=1.0, variant="clip"),
    "ab clip ramp 4": dict(optimizer="ab", rho=1.5, rho_ramp=4.0, variant="clip"),
    "ab clip ramp 16": dict(optimizer="ab", rho=1.5, rho_ramp=16.0, variant="clip"),
}


def labelled(rules: dict) -> list[dict]:
    return [dict(values, rule=name) for name, values in rules.items()]


def part_rule(args) -> pd.DataFrame:
    from abray.training.tasks import SELECTION

    seeds = [0] if args.quick else [0, 1]
    epochs_delay, epochs_zero = (2, 2) if args.quick else (40, 15)
    specs = grid(task_specs(SELECTION, "validation", delay=32, epochs=epochs_delay), rule=labelled(RULES_AT_DELAY),
                 seed=seeds)
    specs += grid(task_specs(SELECTION, "validation", delay=0, epochs=epochs_zero), rule=labelled(RULES_AT_ZERO),
                  seed=seeds)
    return run_part("rule", specs, args.workers)


def part_rule2(args) -> pd.DataFrame:
    from abray.training.tasks import SELECTION

    seeds = [0] if args.quick else [0, 1, 2]
    epochs = 2 if args.quick else 40
    specs = grid(task_specs(SELECTION, "validation", delay=32, epochs=epochs), rule=labelled(RULES_ROUND_TWO),
                 seed=seeds)
    specs += grid(task_specs(SELECTION, "validation", delay=0, epochs=epochs, optimizer="sgdm", rule="sgdm"),
                  seed=seeds)
    return run_part("rule2", specs, args.workers)


def part_ramp(args) -> pd.DataFrame:
    from abray.training.tasks import SELECTION

    seeds = [0] if args.quick else [0, 1]
    epochs = 2 if args.quick else 15  # short runs: where braking that is not needed costs the most
    specs = grid(task_specs(SELECTION, "validation", epochs=epochs), delay=[1, 2, 4], rule=labelled(RAMPS),
                 seed=seeds)
    return run_part("ramp", specs, args.workers)


def part_ramp2(args) -> pd.DataFrame:
    """`ramp` at D = 8 too, and a ramp of 8: 15 epochs at D in {1, 2, 4, 8}, and 40 epochs at D = 8."""
    from abray.training.tasks import SELECTION

    seeds = [0] if args.quick else [0, 1]
    short, long = (2, 2) if args.quick else (15, 40)
    ramps = {**RAMPS, "ab clip ramp 8": dict(optimizer="ab", rho=1.5, rho_ramp=8.0, variant="clip")}
    specs = grid(task_specs(SELECTION, "validation", epochs=short), delay=[1, 2, 4],
                 rule=labelled({"ab clip ramp 8": ramps["ab clip ramp 8"]}), seed=seeds)
    specs += grid(task_specs(SELECTION, "validation", epochs=short, delay=8), rule=labelled(ramps), seed=seeds)
    specs += grid(task_specs(SELECTION, "validation", epochs=long, delay=8), rule=labelled(ramps), seed=seeds)
    return run_part("ramp2", specs, args.workers)


def chosen_tasks(args, default):
    """The suite's tasks named by --tasks (task names, or 'selection' / 'report'), else `default`."""
    from abray.training.tasks import REPORT, SELECTION, SUITE

    if not args.tasks:
        return default
    named = {"selection": SELECTION, "report": REPORT}
    found = [t for name in args.tasks for t in named.get(name, [t for t in SUITE if t.name == name])]
    if not found:
        raise SystemExit(f"--tasks: no such task or group in {args.tasks}; tasks: {', '.join(t.name for t in SUITE)}")
    return found


HARM_RULES = {
    "sgdm": dict(optimizer="sgdm"),
    "ab": dict(optimizer="ab"),  # the defaults
    "ab, rho_ramp 0 (the old default)": dict(optimizer="ab", rho_ramp=0.0),
}


def part_harm(args) -> pd.DataFrame:
    from abray.training.tasks import SUITE

    tasks = chosen_tasks(args, SUITE)
    specs = []
    for epochs in ((2,) if args.quick else (5, 15, 60)):
        for warmup in (0, 5):
            rules = HARM_RULES if epochs <= 15 else {k: v for k, v in HARM_RULES.items() if "old" not in k}
            specs += grid(task_specs(tasks, "test", delay=0, epochs=epochs, warmup_epochs=warmup),
                          rule=labelled(rules), seed=[0])
    # the sweep: 15 epochs at batch 64
    specs += grid(task_specs(tasks, "test", delay=0, epochs=2 if args.quick else 15, batch_size=64),
                  rule=labelled(HARM_RULES), seed=[0])
    return run_part("harm", specs, args.workers)


# Chosen on the selection tasks (parts rule, rule2, ramp) before any report run: the methods the report compares.
# AB with the advisor's lr is not among them: with the factor clipped, the advised AB lr is above abray train's
# default lr on every report task at D = 8 and 32 (part advisor), so it is AB.
REPORT_METHODS_AT = {
    8: {"sgdm": dict(optimizer="sgdm"),
        "ab": dict(optimizer="ab"),  # the defaults: rho 1.5, rho_ramp 4, factor clipped at 0
        "staleness_lr": dict(optimizer="staleness_lr")},  # the best peer on digits (README, "AB against its peers")
    32: {"sgdm": dict(optimizer="sgdm"),
         "ab": dict(optimizer="ab"),
         "staleness_lr": dict(optimizer="staleness_lr"),
         "ab_lwp": dict(optimizer="ab_lwp"),  # AB with linear weight prediction, the defaults
         "ab, old defaults (rho_ramp 0, no clipping)": dict(optimizer="ab", rho_ramp=0.0, clip_factor=False)},
}


def part_delay(args) -> pd.DataFrame:
    from abray.training.tasks import REPORT

    tasks = chosen_tasks(args, REPORT)
    seeds = [0] if args.quick else [0, 1, 2]
    epochs = 2 if args.quick else 40
    # At D = 0 every method here updates exactly as SGDM does (no staleness: no braking, lr / 1), so SGDM alone.
    specs = grid(task_specs(tasks, "test", delay=0, epochs=epochs), rule=labelled({"sgdm": dict(optimizer="sgdm")}),
                 seed=seeds)
    for delay, methods in REPORT_METHODS_AT.items():
        specs += grid(task_specs(tasks, "test", delay=delay, epochs=epochs), rule=labelled(methods), seed=seeds)
    return run_part("delay", specs, args.workers)


ADVISOR_FACTORS = (0.5, 4.0)  # runs at half the advised lr should converge, at 4 times it should fail


def part_advisor(args) -> pd.DataFrame:
    from abray.training.tasks import SUITE

    tasks = chosen_tasks(args, SUITE)
    specs = grid(task_specs(tasks, "test", epochs=2 if args.quick else 15, seed=0), delay=[0, 8, 32],
                 optimizer=["sgdm", "ab"], lr_scale=list(ADVISOR_FACTORS))
    specs = [dict(s, lr_rule="advised_scaled", rule=f"{s['optimizer']} x{s['lr_scale']:g}") for s in specs]
    return run_part("advisor", specs, args.workers)


def show_rule(frame: pd.DataFrame) -> None:
    for delay in (32, 0):
        sub = frame[frame.delay == delay]
        if sub.empty:
            continue
        print(f"\nSelection tasks (validation accuracy %, mean over {sub.seed.nunique()} seeds), D = {delay}, "
              f"{int(sub.epochs.iloc[0])} epochs:")
        table = 100 * sub.pivot_table(index="rule", columns="task", values="accuracy", aggfunc="mean")
        table["mean"] = table.mean(axis=1)
        print(markdown(table.sort_values("mean", ascending=False).round(1)))


def show_ramp(frame: pd.DataFrame) -> None:
    frame = frame.copy()
    frame["column"] = frame.apply(lambda r: f"D = {r.delay}, {r.epochs} ep", axis=1)
    columns = sorted(frame.column.unique(), key=lambda c: (int(c.split(", ")[1].split()[0]), int(c.split()[2][:-1])))
    print(f"\nSelection tasks (validation accuracy %, mean over tasks and {frame.seed.nunique()} seeds):")
    table = 100 * frame.pivot_table(index="rule", columns="column", values="accuracy", aggfunc="mean")[columns]
    table["mean"] = table.mean(axis=1)
    print(markdown(table.round(1)))
    print("\nby task:")
    print(markdown((100 * frame.pivot_table(index=["task", "rule"], columns="column", values="accuracy",
                                            aggfunc="mean")[columns]).round(1)))


# --- tables ----------------------------------------------------------------------------------------------------

def markdown(frame: pd.DataFrame) -> str:
    """A frame as a Markdown table (index as the first columns)."""
    frame = frame.reset_index()
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def mean_std(values: pd.Series) -> str:
    values = 100 * values
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}" if len(values) > 1 else f"{values.mean():.1f}"


def SUITE_ORDER() -> list[str]:  # noqa: N802 (a constant, read late so that the module imports without abray)
    from abray.training.tasks import SUITE

    return [t.name for t in SUITE]


def suite_columns(frame: pd.DataFrame) -> pd.DataFrame:
    from abray.training.tasks import SUITE

    kinds = {t.name: (t.role, t.normalization) for t in SUITE}
    frame = frame.copy()
    frame["role"] = frame.task.map(lambda t: kinds[t][0])
    frame["normalization"] = frame.task.map(lambda t: kinds[t][1])
    return frame


def table_harm(frame: pd.DataFrame) -> pd.DataFrame:
    """Task x (epochs, warmup): SGDM / AB / the old default, final test accuracy at D = 0."""
    frame = suite_columns(frame)
    frame["schedule"] = frame.apply(lambda r: f"{r.epochs} ep, warmup {r.warmup_epochs:g}"
                                    + (f", batch {r.batch_size}" if r.batch_size != BASE["batch_size"] else ""), axis=1)
    cells = {}
    for (task, schedule), group in frame.groupby(["task", "schedule"], sort=False):
        acc = {r: 100 * g.accuracy.mean() for r, g in group.groupby("rule")}
        old = next((v for k, v in acc.items() if "old" in k), None)
        cells[(task, schedule)] = (f"{acc['sgdm']:.1f} / {acc['ab']:.1f}" + (f" ({old:.1f})" if old is not None else ""))
    table = pd.Series(cells).unstack()
    order = frame.drop_duplicates("schedule").sort_values(["epochs", "batch_size", "warmup_epochs"]).schedule
    table = table[list(order)].reindex([t for t in SUITE_ORDER() if t in table.index])
    table.index.name = "task (SGDM / AB (old AB))"
    return table


def table_delay(frame: pd.DataFrame) -> pd.DataFrame:
    """Task x method rows, D columns: mean ± std of final test accuracy; and the gap at D = 32 to SGDM at D = 0."""
    frame = suite_columns(frame)
    rows = {}
    for (task, norm, rule), group in frame.groupby(["task", "normalization", "rule"], sort=False):
        row = {f"D = {d}": mean_std(g.accuracy) for d, g in group.groupby("delay")}
        sgdm0 = frame[(frame.task == task) & (frame.rule == "sgdm") & (frame.delay == 0)].accuracy.mean()
        at32 = group[group.delay == 32].accuracy
        if len(at32):
            row["D = 32 minus SGDM at D = 0"] = f"{100 * (at32.mean() - sgdm0):+.1f}"
        rows[(task, norm, rule)] = row
    table = pd.DataFrame(rows).T
    table.index.names = ["task", "normalization", "method"]
    return table.sort_index(level="task", key=lambda names: names.map(SUITE_ORDER().index), sort_remaining=False)


def table_advisor(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How often the advice held: runs at half the advised lr converged, runs at 4x it failed."""
    frame = suite_columns(frame)
    frame["held"] = frame.apply(lambda r: (not r.failed) if r.lr_scale < 1 else bool(r.failed), axis=1)
    frame["claim"] = frame.lr_scale.map(lambda f: "x0.5 converges" if f < 1 else f"x{f:g} fails")
    frame["normalized"] = frame.normalization.map(lambda n: "none" if n == "none" else "BatchNorm/LayerNorm")
    rate = frame.groupby(["claim", "normalized", "optimizer", "delay"]).held.agg(["sum", "count"])
    rate["held"] = rate.apply(lambda r: f"{int(r['sum'])}/{int(r['count'])}", axis=1)
    detail = frame.pivot_table(index=["task", "optimizer", "delay"], columns="claim",
                               values="accuracy", aggfunc="mean").mul(100).round(1)
    detail["advised lr"] = frame.groupby(["task", "optimizer", "delay"]).advised_lr.first().map(lambda v: f"{v:.3g}")
    return rate[["held"]].unstack("delay"), detail


def tables(part: str) -> None:
    """Print the tables of `part` (or of every part, for "tables") and write them as Parquet for the dashboard."""
    out = RESULTS / "tables"
    out.mkdir(parents=True, exist_ok=True)
    read = lambda name: pd.read_parquet(RESULTS / f"{name}.parquet") if (RESULTS / f"{name}.parquet").exists() \
        else None  # noqa: E731
    parts = ["rule", "rule2", "ramp", "harm", "delay", "advisor"] if part == "tables" else [part]
    ramps = [read(name) for name in ("ramp", "ramp2")]
    for name in parts:
        frame = read(name)
        if frame is None:
            print(f"({name}: no results yet)")
            continue
        if name in ("rule", "rule2"):
            show_rule(frame)
        elif name == "ramp":
            show_ramp(pd.concat([r for r in ramps if r is not None]))
        elif name == "harm":
            table = table_harm(frame)
            print("\nDo no harm: final test accuracy (%) at D = 0, SGDM / AB (the old AB, rho_ramp 0), seed 0:")
            print(markdown(table))
            table.reset_index().to_parquet(out / "harm.parquet", index=False)
        elif name == "delay":
            table = table_delay(frame)
            print("\nReport tasks: final test accuracy (%), mean ± std over seeds, 40 epochs:")
            print(markdown(table))
            table.reset_index().to_parquet(out / "delay.parquet", index=False)
        elif name == "advisor":
            rate, detail = table_advisor(frame)
            rate.columns = [f"D = {d}" for _, d in rate.columns]
            print("\nThe lr advisor's check (15 epochs, seed 0): runs that did as the advice says / runs")
            print(markdown(rate))
            print("\nEach run's final test accuracy (%) and the advised lr:")
            print(markdown(detail))
            rate.reset_index().to_parquet(out / "advisor.parquet", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["rule", "rule2", "ramp", "ramp2", "harm", "delay", "advisor", "tables"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed: checks the script, not the claims")
    parser.add_argument("--tasks", nargs="*", help="harm, delay, advisor: only these tasks (names, or selection / "
                                                   "report), to run a part in pieces")
    args = parser.parse_args()
    global RESULTS
    if args.quick:
        RESULTS = RESULTS.parent / "task_suite_quick"
    start = time.time()
    if args.part == "rule":
        show_rule(part_rule(args))
    if args.part == "rule2":
        show_rule(part_rule2(args))
    if args.part == "ramp":
        show_ramp(part_ramp(args))
    if args.part == "ramp2":
        frame = part_ramp2(args)
        show_ramp(pd.concat([frame, pd.read_parquet(RESULTS / "ramp.parquet")]) if not args.quick else frame)
    if args.part == "harm":
        part_harm(args)
    if args.part == "delay":
        part_delay(args)
    if args.part == "advisor":
        part_advisor(args)
    if args.part in ("harm", "delay", "advisor", "tables"):
        tables(args.part)
    print(f"\nTotal time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
