"""Demo stop ``bae``.

Bayesian autoencoders on 8x8 digits: prior tuned by DSWD on zeros, posterior by adaptive SGHMC on 200 others.
"""

from __future__ import annotations

import time
from pathlib import Path

from bayeskit.datasets import digits_split
from bayeskit.demo.common import pandas_display, print_header, report_health

__all__ = ["run"]

# What a stop says when its chains are flagged: the N(0, 1) prior is the contrast, the baseline the paper
# compares the DSWD prior against; its chains have not mixed at the demo's length (r_hat 2.37 at full size).
UNMIXED = {"BAE, N(0, 1) prior": "(shown as the contrast, the paper's baseline prior: its chains have not "
                                 "mixed at this length, so its NLL is that of these draws)"}


def _plot_digits(rows, titles, path):
    """Rows of 8x8 images, one labelled row per entry of ``rows``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), rows[0].shape[0], figsize=(rows[0].shape[0] * 0.9, len(rows) * 1.0),
                             squeeze=False)
    for r, (images, title) in enumerate(zip(rows, titles)):
        for c, image in enumerate(images):
            axes[r, c].imshow(image.reshape(8, 8).cpu().numpy(), cmap="gray_r")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(out: Path, *, quick: bool, seed: int, progress: bool):
    """Bayesian autoencoders on 8x8 digits: prior tuned by DSWD on zeros, posterior by adaptive SGHMC on 200 others."""
    from bayeskit.inference import AdaptiveSGHMC
    from bayeskit.models import BayesianAutoencoder, DirichletProcessMixture, VariationalAutoencoder

    zeros, train, test = digits_split(seed)
    print_header(f"Bayesian autoencoders: prior tuned on {len(zeros)} zeros, posterior on {len(train)} images "
                 f"of the digits 1-9, tested on {len(test)} more")
    architecture = {"latent_dim": 8, "hidden": (128,)}
    steps = 300 if quick else 3000
    began = time.perf_counter()
    vae = VariationalAutoencoder(64, **architecture)
    vae.fit(train, num_steps=steps, seed=seed, progress=progress)
    nll = {"VAE": -float(vae.log_likelihood(test).mean())}
    print(f"{'VAE':>20}: held-out NLL {nll['VAE']:.1f} per image, {time.perf_counter() - began:.1f} s")
    posts = {}
    for name in ("BAE, N(0, 1) prior", "BAE, DSWD prior"):
        began = time.perf_counter()
        bae = BayesianAutoencoder(64, **architecture)
        if "DSWD" in name:
            # quick: 8 prior draws per batch, not 32 (the distance's sorts are most of the quick run)
            bae.fit_prior(zeros, num_steps=steps // 3, lr=0.01, pretrain_steps=steps,
                          num_prior_draws=8 if quick else 32, seed=seed, progress=progress)
        post = AdaptiveSGHMC(bae, step_size=0.01, num_warmup=steps, num_samples=32, thin=max(1, steps // 32),
                             num_chains=4).run(train, seed=seed, progress=progress)
        posts[name] = (bae, post)
        nll[name] = -float(bae.log_likelihood(post, test).mean())
        worst = post.summary(var_names=["dec1_b"], health=False)["r_hat"].max()
        print(f"{name:>20}: held-out NLL {nll[name]:.1f} per image, max r_hat of the output biases {worst:.2f}, "
              f"{time.perf_counter() - began:.1f} s")
        report_health(f"the {name} chains", post, if_unhealthy=UNMIXED.get(name))
    bae, post = posts["BAE, DSWD prior"]
    with pandas_display():
        table = post.summary(var_names=["dec1_b"], health=False)
        print(table.iloc[[19, 27, 36, 44]][["mean", "sd", "ess_bulk", "r_hat"]])
    codes, _ = bae.latent(post, train)
    mixture = DirichletProcessMixture(20)
    mixture.fit(codes, seed=seed, progress=progress)
    reconstruction, uncertainty = bae.reconstruct(post, test[:10])
    generated = bae.generate(post, mixture, 10, seed=seed)
    _plot_digits([test[:10], reconstruction, uncertainty / uncertainty.max(), generated],
                 ["test", "reconstruction", "pixel sd", "generated"], out / "bae_digits.png")
    path = out / "bae_posterior.nc"
    post.save(path)
    print(f"wrote {path}, {out / 'bae_digits.png'}")
    return post
