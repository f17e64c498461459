"""AB against the peer delay mitigations on one harness: digits accuracy and the quadratic verdict.

Protocol:
  1. Base hyperparameters are `abray train`'s defaults, tuned once for SGDM at D = 0 on the validation
     split by benchmarks/digits_delay.py (lr, batch size, warmup, cosine schedule, epochs).
  2. Each method's own strength parameter (AB and AB+LWP: rho; DC-ASGD: lambda0; Nesterov look-ahead:
     lookahead) is chosen once on the validation split (20% of the training set), by the mean accuracy
     over D in {8, 32} and 2 seeds. Methods without one (staleness-aware lr, LWP, spike compensation)
     have nothing to tune.
  3. Final test accuracy for D in {0, 4, 8, 16, 32} x every method x 3 seeds.
  4. The quadratic model's verdict: for each method (with its chosen strength), the largest eta*lambda
     up to which delayed training on L = lambda w^2 / 2 ends below its starting loss
     (`abray.theory.max_stable_eta_lambda_simulated`), at D = 8 and 32.

    python benchmarks/peers_delay.py [--workers 2] [--quick]

About 15 minutes on 2 cores. Figures in the README ("AB against its peers").
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import time

import pandas as pd

from abray.optim.methods import METHODS
from abray.training.config import TrainConfig

DELAYS = (0, 4, 8, 16, 32)
SELECTION_DELAYS = (8, 32)
STRENGTHS = {
    "ab": ("rho", (1.0, 1.5, 2.0)),
    "ab_lwp": ("rho", (0.5, 1.0, 1.5, 2.0)),
    "dcasgd": ("dc_lambda", (0.5, 2.0, 8.0)),
    "nesterov_lookahead": ("lookahead", (0.25, 0.5, 1.0)),
}


def _train(task: tuple[dict, bool]) -> dict:
    import torch

    from abray.training.config import parse_config
    from abray.training.data import digits
    from abray.training.run import run

    torch.set_num_threads(1)
    values, validation = task
    last = run(parse_config(values), data=digits(validation=validation))[-1]
    return {**values, "accuracy": float(last.test_accuracy), "diverged": bool(last.diverged)}


def _verdict(task: tuple[str, int, dict]) -> dict:
    import torch

    from abray.theory import max_stable_eta_lambda_simulated

    torch.set_num_threads(1)
    method, delay, strength = task
    return {"optimizer": method, "delay": delay,
            "max_eta_lambda": max_stable_eta_lambda_simulated(method, delay, **strength)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed: checks the script, not the claims")
    args = parser.parse_args()
    defaults = TrainConfig()
    base = dict(epochs=2 if args.quick else defaults.epochs)
    tune_seeds, final_seeds = ((0,), (0,)) if args.quick else ((0, 1), (0, 1, 2))
    print(f"base (abray train defaults): lr {defaults.lr}, batch size {defaults.batch_size}, "
          f"{defaults.warmup_epochs:g} warmup epochs, {defaults.schedule} schedule, {base['epochs']} epochs\n")
    start = time.time()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        tasks = [(dict(base, optimizer=m, delay=d, seed=s, **{name: v}), True)
                 for m, (name, values) in STRENGTHS.items()
                 for v, d, s in itertools.product(values, SELECTION_DELAYS, tune_seeds)]
        selection = pd.DataFrame(pool.map(_train, tasks, chunksize=1))
        chosen = {}
        print("1. Strength on the validation split (mean accuracy over D in {8, 32} and seeds):")
        for m, (name, values) in STRENGTHS.items():
            scores = selection[selection.optimizer == m].groupby(name).accuracy.mean()
            chosen[m] = {name: float(scores.idxmax())}
            print(f"   {m:20s} " + "  ".join(f"{name}={v:g}: {scores[v]:.3f}" for v in values)
                  + f"   -> {name} = {scores.idxmax():g}")

        tasks = [(dict(base, optimizer=m, delay=d, seed=s, **chosen.get(m, {})), False)
                 for m, d, s in itertools.product(METHODS, DELAYS, final_seeds)]
        final = pd.DataFrame(pool.map(_train, tasks, chunksize=1))
        verdicts = pd.DataFrame(pool.map(_verdict, [(m, d, chosen.get(m, {})) for m in METHODS for d in (8, 32)],
                                          chunksize=1))

    mean = final.groupby(["optimizer", "delay"]).accuracy.mean().unstack() * 100
    std = final.groupby(["optimizer", "delay"]).accuracy.std().unstack().fillna(0) * 100
    div = final.groupby(["optimizer", "delay"]).diverged.sum().unstack()
    verdict = verdicts.pivot(index="optimizer", columns="delay", values="max_eta_lambda")
    print(f"\n2. Final test accuracy (%), mean ± std over {len(final_seeds)} seeds; quadratic verdict "
          "(largest stable eta*lambda):")
    header = "".join(f"{'D=' + str(d):>14s}" for d in DELAYS)
    print(f"   {'method':20s}{header}   {'quad D=8':>9s} {'quad D=32':>9s}")
    for m in METHODS:
        cells = "".join(f"{mean.loc[m, d]:7.1f} ± {std.loc[m, d]:4.1f}" + ("*" if div.loc[m, d] else " ")
                        for d in DELAYS)
        print(f"   {m:20s}{cells}   {verdict.loc[m, 8]:9.4f} {verdict.loc[m, 32]:9.4f}")
    print("   (* some seeds diverged)")
    print("\n3. Best method at each D (mean), and whether AB or AB+LWP is within noise of it "
          "(best mean - std of the best):")
    for d in DELAYS:
        best = mean[d].idxmax()
        ab_best = max(mean.loc["ab", d], mean.loc["ab_lwp", d])
        within = ab_best >= mean.loc[best, d] - std.loc[best, d]
        print(f"   D={d:2d}: best {best} {mean.loc[best, d]:.1f}; AB {mean.loc['ab', d]:.1f}, "
              f"AB+LWP {mean.loc['ab_lwp', d]:.1f} -> {'yes' if within else 'NO'}")
    print(f"\nchosen strengths: {chosen}\nTotal time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
