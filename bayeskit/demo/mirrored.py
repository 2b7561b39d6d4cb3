"""Demo stop ``mirrored``.

MirroredSVGD and SVMD on a sparse Dirichlet on the 20-simplex, scored against exact draws.
"""

from __future__ import annotations

import time
from pathlib import Path

from bayeskit.demo.common import pandas_display, print_header, report_health

__all__ = ["run"]


def run(out: Path, *, quick: bool, seed: int, progress: bool):
    """MirroredSVGD and SVMD on a sparse Dirichlet on the 20-simplex, scored against exact draws."""
    import pyro
    import pyro.distributions as dist
    import torch

    from bayeskit.diagnostics import energy_distance
    from bayeskit.inference import SVMD, MirroredSVGD

    # float64: most coordinates of this Dirichlet are far below float32's smallest normal number
    alpha = torch.full((20,), 0.1, dtype=torch.float64)
    alpha[:3] += torch.tensor([90.0, 5.0, 5.0], dtype=torch.float64)

    def sparse_dirichlet():
        pyro.sample("p", dist.Dirichlet(alpha))

    num_steps, num_particles = (100 if quick else 500), 50
    print_header(f"Mirrored Stein: sparse Dirichlet on the 20-simplex, alpha = 0.1 + (90, 5, 5, 0, ...), "
                 f"{num_particles} particles, {num_steps} steps")
    exact = dist.Dirichlet(alpha)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        reference = exact.sample((1000,))
        floor = torch.stack([energy_distance(exact.sample((num_particles,)), reference) for _ in range(50)])
        start = {"p": dist.Dirichlet(torch.full((20,), 5.0, dtype=torch.float64)).sample((num_particles,))}
    print(f"i.i.d. floor: {num_particles} exact draws are at energy distance {float(floor.median()):.2e} "
          "(median) from 1,000 others")
    posts = {}
    for engine in (MirroredSVGD(sparse_dirichlet, num_particles=num_particles, init=start,
                                dims={"p": ["category"]}),
                   SVMD(sparse_dirichlet, num_particles=num_particles, init=start, dims={"p": ["category"]})):
        began = time.perf_counter()
        post = engine.run(num_steps=num_steps, seed=seed, progress=progress)
        distance = energy_distance(post.samples["p"].reshape(num_particles, 20), reference)
        print(f"{engine.name:>12}: energy distance {float(distance):.2e} in {time.perf_counter() - began:.1f} s; "
              f"every particle on the simplex (sums to 1 within "
              f"{float((post.samples['p'].sum(-1) - 1).abs().max()):.0e})")
        posts[engine.name] = post
        report_health(engine.name, post)
    with pandas_display():
        print(posts["SVMD"].summary(var_names=["p"], health=False).head(5))
    path = out / "mirrored_posterior.nc"
    posts["SVMD"].save(path)
    posts["SVMD"].plot("forest", var_names=["p"], path=out / "mirrored_forest.png")
    print(f"wrote {path}, {out / 'mirrored_forest.png'}")
    return posts["SVMD"]
