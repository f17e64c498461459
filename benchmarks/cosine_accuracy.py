"""Accuracy of the braking cosine: the kernel's float32 sums against float64, and the norm identities it rejected.

<g, v> could come from norms alone (`torch._foreach_norm` is one fused kernel where no foreach dot product
exists): <g, v> = (||g + v||^2 - ||g||^2 - ||v||^2) / 2, or (||g + v||^2 - ||g - v||^2) / 4. Both subtract
numbers of size ||g||^2 + ||v||^2, so the cosine's error grows like eps32 (||g|| / ||v|| + ||v|| / ||g||):
small for comparable norms, large when one norm is far below the other. This script prints the largest
|c - c_float64| over a few seeds for each case; the kernel (direct dot products, float32 sums) is what
ABSGD uses on both paths.

    python benchmarks/cosine_accuracy.py
"""

from __future__ import annotations

import torch

from abray.optim import cosines

N = 100_000
SEEDS = 5


def pair(case: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.randn(N, generator=gen, dtype=torch.float64)
    noise = torch.randn(N, generator=gen, dtype=torch.float64)
    if case == "independent":
        v = noise
    elif case == "nearly parallel":
        v = g + 1e-3 * noise
    elif case == "nearly anti-parallel":
        v = -g + 1e-3 * noise
    else:  # "||g|| / ||v|| = r": c about 0.5
        r = float(case.split("= ")[1])
        v = 0.5 * g + 0.866 * noise
        g = r * g
    return g.float(), v.float()


def exact(g: torch.Tensor, v: torch.Tensor) -> float:
    g, v = g.double(), v.double()
    return float(g @ v / (g.norm() * v.norm()))


def identity_sum(g: torch.Tensor, v: torch.Tensor) -> float:
    ng, nv, ns = (float(x) for x in torch._foreach_norm([g, v, g + v]))
    return (ns * ns - ng * ng - nv * nv) / 2 / (ng * nv)


def identity_polar(g: torch.Tensor, v: torch.Tensor) -> float:
    ng, nv, ns, nd = (float(x) for x in torch._foreach_norm([g, v, g + v, g - v]))
    return (ns * ns - nd * nd) / 4 / (ng * nv)


METHODS = {
    "kernel, foreach": lambda g, v: float(cosines([g], [v], eps=0.0, foreach=True)[0]),
    "kernel, single-tensor": lambda g, v: float(cosines([g], [v], eps=0.0, foreach=False)[0]),
    "(|g+v|^2-|g|^2-|v|^2)/2": identity_sum,
    "(|g+v|^2-|g-v|^2)/4": identity_polar,
}
CASES = ["independent", "nearly parallel", "nearly anti-parallel", "||g|| / ||v|| = 1e-2", "||g|| / ||v|| = 1e-4",
         "||g|| / ||v|| = 1e-6"]


def main() -> None:
    print(f"largest |c - c_float64| over {SEEDS} seeds, float32 tensors of {N} elements")
    print(f"{'case':24s}" + "".join(f"{m:>26s}" for m in METHODS))
    for case in CASES:
        errors = {m: 0.0 for m in METHODS}
        for seed in range(SEEDS):
            g, v = pair(case, torch.Generator().manual_seed(seed))
            c = exact(g, v)
            for name, method in METHODS.items():
                errors[name] = max(errors[name], abs(method(g, v) - c))
        print(f"{case:24s}" + "".join(f"{e:26.1e}" for e in errors.values()))


if __name__ == "__main__":
    main()
