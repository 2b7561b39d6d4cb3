# %% [markdown]
# # Bayesian autoencoders on handwritten digits, with a prior chosen by DSWD
#
# A Bayesian autoencoder (BAE) puts a prior on every weight of an encoder and
# a decoder and samples their posterior given the images. Tran et al. ("Model
# Selection for Bayesian Autoencoders", NeurIPS 2021) argue that the prior
# matters most when there are few images, and choose it from other data: the
# prior's per-weight means and scales are tuned until images simulated from
# the prior look like real ones. "Look like" is measured by the distributional
# sliced-Wasserstein distance (DSWD).
#
# We follow their small-data setting on the 8x8 digits that ship with
# bayeskit (the UCI set scikit-learn also bundles). The prior is tuned on the
# zeros, the posterior is drawn from 200 images of the digits 1-9 by adaptive
# SGHMC, and 300 further images of 1-9 are held out. On those we compare three
# models by their Continuous-Bernoulli negative log-likelihood (NLL, lower is
# better): the BAE with the tuned prior, the BAE with a standard N(0, 1) prior,
# and a VAE of the same architecture. Then we use the BAE's posterior for
# reconstructions with per-pixel uncertainty, for r_hat and ESS of the
# weights, and with a Dirichlet-process mixture on its latent codes, for
# generating new digits.
#
# Run it as a script or cell by cell. `BAYESKIT_QUICK=1` shrinks every run so
# that CI goes through the same code in a minute; its numbers mean nothing.
# Figures go to the folder named by `BAYESKIT_OUT`.

# %%
import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a script writes its figures to files and opens no windows
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from bayeskit.datasets import digits_split
from bayeskit.inference import AdaptiveSGHMC
from bayeskit.models import BayesianAutoencoder, DirichletProcessMixture, VariationalAutoencoder

QUICK = os.environ.get("BAYESKIT_QUICK") == "1"
OUT = Path(os.environ.get("BAYESKIT_OUT") or tempfile.mkdtemp(prefix="bae-"))
OUT.mkdir(parents=True, exist_ok=True)
STEPS = 300 if QUICK else 3000
SEED = 0

# %% [markdown]
# ## Data
# Pixels are counts 0-16 scaled to [0, 1], which the Continuous Bernoulli
# (a proper density on [0, 1], unlike the Bernoulli) models directly.

# %%
zeros, train, test = digits_split(SEED)
print(f"prior data: {len(zeros)} zeros; training: {len(train)} images of 1-9; test: {len(test)} images of 1-9")
architecture = {"latent_dim": 8, "hidden": (128,)}  # 64 -> 128 -> 8 -> 128 -> 64, ReLU

# %% [markdown]
# ## The baseline: a VAE
# Same encoder and decoder, point-estimate weights, trained on the ELBO. Its
# NLL is scored at the reconstruction from the posterior mean code.

# %%
vae = VariationalAutoencoder(64, **architecture)
vae.fit(train, num_steps=STEPS, seed=SEED, progress=False)
nll = {"VAE": -float(vae.log_likelihood(test).mean())}

# %% [markdown]
# ## BAE with the standard prior
# `BayesianAutoencoder` is an ordinary Pyro model over 19,000 weights, so any
# bayeskit engine samples it. `AdaptiveSGHMC` (Springenberg et al., 2016)
# learns a diagonal mass from the gradients during burn-in and then freezes
# it: the weights' scales differ by orders of magnitude, and one step size
# suits them all only once they are rescaled. Four chains run in one batched
# step; we keep 32 draws per chain.

# %%
def sample_posterior(bae):
    engine = AdaptiveSGHMC(bae, step_size=0.01, num_warmup=STEPS, num_samples=32, thin=max(1, STEPS // 32),
                           num_chains=4)
    return engine.run(train, seed=SEED, progress=False)


began = time.perf_counter()
standard = BayesianAutoencoder(64, **architecture)  # N(0, 1) on every weight
standard_post = sample_posterior(standard)
nll["BAE, N(0, 1) prior"] = -float(standard.log_likelihood(standard_post, test).mean())
print(f"standard-prior BAE: {time.perf_counter() - began:.0f} s")

# %% [markdown]
# ## BAE with a prior tuned by DSWD on the zeros
# `fit_prior` first trains an ordinary autoencoder on the zeros and centres
# the prior there, with every prior sd at exp(-3); then it moves the means
# and scales down the DSWD between images simulated from the prior
# predictive and the real zeros (32 prior draws per batch of 64 images; 8 in
# quick mode, where the distance's sorts would otherwise take most of the run).

# %%
began = time.perf_counter()
tuned = BayesianAutoencoder(64, **architecture)
fit = tuned.fit_prior(zeros, num_steps=STEPS // 3, lr=0.01, pretrain_steps=STEPS, num_prior_draws=8 if QUICK else 32,
                     seed=SEED, progress=False)
print(f"DSWD over the prior fit: {float(fit.trace['loss'][:20].mean()):.4f} -> "
      f"{float(fit.trace['loss'][-20:].mean()):.4f}")
scales = torch.cat([value.detach().exp().flatten() for value in tuned.prior_log_scale.values()])
print(f"tuned prior sd: median {float(scales.median()):.3f}, range {float(scales.min()):.3f}-{float(scales.max()):.3f}")
tuned_post = sample_posterior(tuned)
nll["BAE, DSWD prior"] = -float(tuned.log_likelihood(tuned_post, test).mean())
print(f"tuned-prior BAE: {time.perf_counter() - began:.0f} s")

# %% [markdown]
# ## Held-out NLL
# The BAE's score averages the likelihood over its posterior draws
# (Bayesian model averaging); the mean image is the floor any model must beat.

# %%
mean_image = train.mean(0).clamp(1e-3, 1 - 1e-3)
nll["mean image"] = -float(torch.distributions.ContinuousBernoulli(probs=mean_image).log_prob(test).sum(-1).mean())
for name, value in nll.items():
    print(f"{name:>20}: NLL {value:8.1f} per image")

# %% [markdown]
# What this script printed at full size (`python
# tutorials/05_bayesian_autoencoder_digits.py`, 7 min on a 2-core CPU): VAE
# -103.6, BAE with the N(0, 1) prior -97.7, BAE with the DSWD prior -77.7,
# mean image -41.2; output-bias r_hat median 1.47 (max 2.37) under N(0, 1)
# against 1.009 (max 1.074) under the tuned prior. On
# these digits the tuned prior does *worse*: its sd of about 0.05 around an
# autoencoder of zeros keeps the posterior close to a decoder of zeros, and
# 200 images of the other digits cannot pull it far enough. The
# paper's claim that the tuned prior wins is not what we see here; it may
# need its larger convolutional networks, longer prior fits or images of the
# same kind for prior and training data. What the tuned prior does buy is
# mixing: the chains agree (r_hat near 1 below), while under N(0, 1) they sit
# in different modes (r_hat far above 1).

# %% [markdown]
# ## Convergence: r_hat and ESS of a few weights
# The export carries the chains, so ArviZ's diagnostics apply. Neural network
# posteriors have many symmetric modes; the output biases are identified.

# %%
for name, post in (("N(0, 1)", standard_post), ("DSWD", tuned_post)):
    table = post.summary(var_names=["dec1_b"])
    print(f"{name} prior, output biases: r_hat median {table['r_hat'].median():.3f}, "
          f"max {table['r_hat'].max():.3f}; bulk ESS median {table['ess_bulk'].median():.0f} "
          f"of {post.num_chains * post.num_draws} draws")
print(tuned_post.summary(var_names=["dec1_b"]).iloc[[19, 27, 36, 44]][["mean", "sd", "ess_bulk", "r_hat"]])

# %% [markdown]
# ## Reconstructions, their uncertainty, and new digits
# `reconstruct` averages over the draws and gives each pixel's sd across
# them. A Dirichlet-process Gaussian mixture (truncated stick-breaking,
# fitted by variational EM) on the posterior-mean codes of the training images
# switches off the components it does not need; codes drawn from it and
# decoded by random posterior draws are new digits.

# %%
bae, post = standard, standard_post
if nll["BAE, DSWD prior"] < nll["BAE, N(0, 1) prior"]:
    bae, post = tuned, tuned_post
mean, sd = bae.reconstruct(post, test[:10])
codes, _ = bae.latent(post, train)
mixture = DirichletProcessMixture(20)
mixture.fit(codes, seed=SEED, progress=False)
print(f"mixture components with weight > 2%: {int((mixture.weights > 0.02).sum())} of 20")
generated = bae.generate(post, mixture, 10, seed=SEED)

fig, axes = plt.subplots(4, 10, figsize=(10, 4.4))
for row, (images, title) in enumerate([(test[:10], "test"), (mean, "mean"), (sd / sd.max(), "pixel sd"),
                                       (generated, "generated")]):
    for column in range(10):
        axes[row, column].imshow(images[column].reshape(8, 8), cmap="gray_r")
        axes[row, column].axis("off")
    axes[row, 0].set_title(title, loc="left", fontsize=9)
fig.tight_layout()
fig.savefig(OUT / "bae_digits.png", dpi=100)
plt.show()  # inline in a notebook (and on the documentation site); nothing under Agg
post.save(OUT / "bae_posterior.nc")
print(f"wrote {OUT / 'bae_digits.png'} and {OUT / 'bae_posterior.nc'}")
