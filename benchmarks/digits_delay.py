"""The paper's claim on digits: final test accuracy against delay, SGDM and AB, 3 seeds.

Protocol (the paper's: tune SGDM at D = 0, then hold everything fixed):
  1. SGDM at D = 0 on a validation split (20% of the training set, never the test set): a grid over
     lr x batch size, with 5 warmup epochs and a cosine schedule over 60 epochs; the best mean over
     2 seeds is kept for every later run, for both optimizers and every delay.
  2. AB's own parameters (rho x granularity) on the same validation split with those hyperparameters,
     scored by the mean validation accuracy over D in {0, 8, 32} and 2 seeds. The winner is ABSGD's
     default.
  3. The table: D in {0, 1, 2, 4, 8, 16, 32} x {SGDM, AB} x 3 seeds, trained on the full training set,
     final test accuracy as mean and standard deviation.

    python benchmarks/digits_delay.py [--model digits_cnn|digits_cnn_bn] [--workers 2] [--epochs 60] [--quick]

Runs in about 10 minutes on 2 cores (one single-threaded process a core). Figures in the README.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import time

import numpy as np
import pandas as pd

DELAYS = (0, 1, 2, 4, 8, 16, 32)
SELECTION_DELAYS = (0, 8, 32)
LRS = (0.01, 0.03, 0.1)
BATCH_SIZES = (16, 32)
RHOS = (0.5, 1.0, 1.5, 2.0)
GRANULARITIES = ("tensor", "global", "element")


def _run(task: tuple[dict, bool]) -> dict:
    import torch

    from abray.training.config import parse_config
    from abray.training.data import digits
    from abray.training.run import run

    torch.set_num_threads(1)
    values, validation = task
    last = run(parse_config(values), data=digits(validation=validation))[-1]
    return {**values, "accuracy": float(last.test_accuracy), "diverged": bool(last.diverged)}


def run_all(pool, tasks: list[dict], validation: bool) -> pd.DataFrame:
    return pd.DataFrame(pool.map(_run, [(t, validation) for t in tasks], chunksize=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--model", default="digits_cnn", choices=["digits_cnn", "digits_cnn_bn"])
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed: checks the script, not the claim")
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    tune_seeds, final_seeds = ((0,), (0,)) if args.quick else ((0, 1), (0, 1, 2))
    base = dict(dataset="digits", model=args.model, epochs=epochs, warmup_epochs=min(5, epochs // 2),
                schedule="cosine", momentum=0.9)
    start = time.time()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        # 1. SGDM at D = 0, validation split
        grid = [dict(base, optimizer="sgdm", delay=0, lr=lr, batch_size=bs, seed=s)
                for lr, bs, s in itertools.product(LRS, BATCH_SIZES, tune_seeds)]
        tuning = run_all(pool, grid, validation=True)
        by_hp = tuning.groupby(["lr", "batch_size"]).accuracy.mean()
        lr, batch_size = by_hp.idxmax()
        print("1. SGDM at D = 0, validation accuracy (mean over seeds):")
        print(by_hp.unstack().to_string(float_format=lambda x: f"{x:.3f}"))
        print(f"   chosen: lr {lr}, batch size {batch_size}\n", flush=True)
        base.update(lr=float(lr), batch_size=int(batch_size))

        # 2. AB's rho and granularity, validation split, mean over D in SELECTION_DELAYS
        grid = [dict(base, optimizer="ab", delay=d, rho=r, granularity=g, seed=s)
                for r, g, d, s in itertools.product(RHOS, GRANULARITIES, SELECTION_DELAYS, tune_seeds)]
        selection = run_all(pool, grid, validation=True)
        per_delay = selection.groupby(["granularity", "rho", "delay"]).accuracy.mean().unstack()
        per_delay["mean"] = per_delay.mean(axis=1)
        granularity, rho = per_delay["mean"].idxmax()
        print(f"2. AB on the validation split, by delay (mean over seeds), lr {lr}, batch size {batch_size}:")
        print(per_delay.to_string(float_format=lambda x: f"{x:.3f}"))
        print(f"   chosen: rho {rho}, granularity {granularity}\n", flush=True)

        # 3. the table, on the test set
        grid = [dict(base, optimizer=o, delay=d, seed=s, rho=float(rho), granularity=granularity)
                for o, d, s in itertools.product(("sgdm", "ab"), DELAYS, final_seeds)]
        final = run_all(pool, grid, validation=False)
    table = final.groupby(["delay", "optimizer"]).accuracy.agg(["mean", "std"]).unstack()
    print("3. Final test accuracy (%), mean ± std over seeds "
          f"({len(final_seeds)}), {args.model}, {epochs} epochs:")
    print(f"   {'D':>3s}  {'SGDM':>14s}  {'AB':>14s}  diverged (SGDM/AB)")
    for d in DELAYS:
        row = [f"{100 * table.loc[d, ('mean', o)]:6.1f} ± {100 * np.nan_to_num(table.loc[d, ('std', o)]):4.1f}"
               for o in ("sgdm", "ab")]
        div = [int(final[(final.delay == d) & (final.optimizer == o)].diverged.sum()) for o in ("sgdm", "ab")]
        print(f"   {d:3d}  {row[0]:>14s}  {row[1]:>14s}  {div[0]}/{div[1]}")
    sgdm0, sgdm32 = table.loc[0, ("mean", "sgdm")], table.loc[32, ("mean", "sgdm")]
    ab32 = table.loc[32, ("mean", "ab")]
    print(f"\nTarget: AB at D = 32 within 2 points of SGDM at D = 0: {100 * (sgdm0 - ab32):+.1f} points "
          f"({'met' if sgdm0 - ab32 <= 0.02 else 'NOT met'}); SGDM at D = 32 loses more than 10 points: "
          f"{100 * (sgdm0 - sgdm32):.1f} points ({'met' if sgdm0 - sgdm32 > 0.10 else 'NOT met'}).")
    print(f"Total time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
