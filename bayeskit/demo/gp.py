"""Demo stop ``gp``.

Focal depths of 1,000 Fiji earthquakes mapped by a latent GP with sparse inverse-Cholesky VI (DKLGP).
"""

from __future__ import annotations

import time
from pathlib import Path

from bayeskit.demo.common import one_thread, print_header, report_health

__all__ = ["run"]


@one_thread
def run(out: Path, *, quick: bool, seed: int, progress: bool):
    """Focal depths of 1,000 Fiji earthquakes mapped by a latent GP with sparse inverse-Cholesky VI (DKLGP)."""
    import matplotlib.pyplot as plt
    import torch

    from bayeskit.datasets import load_fiji_quakes
    from bayeskit.models import SparseInverseCholeskyGP

    train, test = load_fiji_quakes(dtype=torch.float64).split(0.2, seed=seed)
    depth_mean, depth_sd = train.y.mean(), train.y.std()
    print_header(f"Sparse inverse-Cholesky GP (DKLGP): depth of {len(train.y)} Fiji earthquakes over "
                 f"(longitude, latitude), {len(test.y)} held out")
    gp = SparseInverseCholeskyGP(train.x, (train.y - depth_mean) / depth_sd, rho=3.0, likelihood="student_t")
    began = time.perf_counter()
    fit = gp.fit(num_epochs=3 if quick else 60, lr=0.02, reorder_after=1 if quick else 6, seed=seed,
                 progress=progress)
    predictive = gp.predict(test.x, observed=True)
    rmse = float((predictive.mean * depth_sd + depth_mean - test.y).square().mean().sqrt())
    print(f"fit ({fit.meta['num_epochs']} epochs, {time.perf_counter() - began:.1f} s, m = {gp.num_neighbours:.1f}): "
          f"lengthscales {gp.kernel.lengthscale.detach().numpy().round(2)} degrees, Student-t df "
          f"{float(gp.likelihood.df):.1f}; held-out RMSE {rmse:.1f} km (sd of depths {float(test.y.std()):.1f} km)")
    report_health("the ELBO fit", fit)
    longitude, latitude = torch.linspace(165.5, 188.5, 60).double(), torch.linspace(-39.0, -10.5, 60).double()
    latent = gp.predict(torch.cartesian_prod(longitude, latitude))  # longitude-major: (60, 60) after reshape
    depth = (latent.mean * depth_sd + depth_mean).reshape(len(longitude), len(latitude))
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    image = axis.pcolormesh(longitude, latitude, depth.T, shading="nearest", cmap="viridis_r")
    axis.scatter(train.x[:, 0], train.x[:, 1], s=1, c="w")
    axis.set(xlabel="longitude", ylabel="latitude", title="predictive mean depth (km)")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(out / "gp_map.png", dpi=110)
    plt.close(figure)
    post = gp.sample_posterior(num_samples=100 if quick else 500, seed=seed)
    path = out / "gp_posterior.nc"
    post.save(path)
    print(f"wrote {path}, {out / 'gp_map.png'}")
    return post
