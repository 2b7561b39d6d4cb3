# %% [markdown]
# # SVGD on a Bayesian logistic regression
#
# This tutorial walks through bayeskit's spine on real data: a Pyro model, the
# `Target` every gradient engine sees, Stein variational gradient descent, the
# `Posterior` it returns, ArviZ export, diagnostics, and saving to netCDF.
# We check the answer against Pyro's NUTS on the same model.
#
# Run it as a script (`python tutorials/01_svgd_logistic_regression.py`) or
# cell by cell in an editor that understands `# %%`.  `BAYESKIT_QUICK=1`
# shrinks the sizes so that CI runs the same code in seconds.

# %%
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a script writes its figures to files and opens no windows
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
import torch
from pyro.infer import MCMC, NUTS

import bayeskit as bk
from bayeskit.datasets import load_breast_cancer
from bayeskit.diagnostics import kernel_stein_discrepancy
from bayeskit.models import logistic_regression

QUICK = os.environ.get("BAYESKIT_QUICK") == "1"
OUT = Path(os.environ.get("BAYESKIT_OUT") or tempfile.mkdtemp(prefix="bayeskit-tutorial-"))
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Data and model
# The Breast Cancer Wisconsin data ship with bayeskit: 569 tumours, 30
# features, `y = 1` for malignant. `logistic_regression` is an ordinary Pyro
# model with N(0, 1) priors on the intercept `alpha` and coefficients `beta`.

# %%
data = load_breast_cancer().standardized()
train, test = data.split(test_fraction=0.2, seed=0)
print(train.x.shape, test.x.shape)

# %% [markdown]
# ## The Target
# Engines do not see the model directly but its `Target`: a batched log
# density on a flat unconstrained vector with its gradient. bayeskit checks
# that the model broadcasts over an extra leading dimension, and then
# evaluates all particles in a single model call.

# %%
target = bk.Target.from_pyro(logistic_regression, train.x, train.y)
print(target)
print("one call for all particles:", target.vectorized)
z = target.init(4, torch.Generator().manual_seed(0))
log_prob, score = target.log_prob_and_score(z)
print(log_prob.shape, score.shape)

# %% [markdown]
# ## SVGD
# 100 particles in two independent sets of 50 (their spread tells how much a
# run's result depends on its start), the RBF
# kernel with the median-heuristic bandwidth and Adagrad. `seed` makes the
# run bit-for-bit reproducible on CPU.

# %%
num_steps = 60 if QUICK else 1000
engine = bk.inference.SVGD(logistic_regression, num_particles=50, num_chains=2, kernel="rbf",
                           dims={"beta": ["feature"]}, coords={"feature": list(data.feature_names)})
post = engine.run(train.x, train.y, num_steps=num_steps, seed=0)
print(post)

# %% [markdown]
# ## Reading the result
# `summary()` is ArviZ's table (for particles: mean, sd and interval; ESS
# along particles would mean nothing). The per-step trace records what the engine
# did: the mean log density should plateau and the update size shrink.

# %%
print(post.summary(var_names=["alpha", "beta"]).head(8))
print("final mean log density:", float(post.trace["log_prob"][-1]))
print("update size first/last:", float(post.trace["phi_norm"][0]), float(post.trace["phi_norm"][-1]))

# %% [markdown]
# The particles' kernel Stein discrepancy measures how well they match the
# target using only its score: smaller is better.

# %%
particles = target.unconstrain(post.samples).reshape(2, -1, target.dim)
_, particle_scores = target.log_prob_and_score(particles)
print("KSD per particle set:", kernel_stein_discrepancy(particles, particle_scores))

# %% [markdown]
# ## Predictions
# The posterior predictive probability averages the particles' predictions.

# %%
alpha = post.samples["alpha"].reshape(-1, 1)
beta = post.samples["beta"].reshape(-1, train.x.shape[1])
probability = torch.sigmoid(alpha + beta @ test.x.T).mean(0)
accuracy = ((probability > 0.5).float() == test.y).float().mean()
print(f"held-out accuracy: {accuracy:.3f}")

# %% [markdown]
# ## Compare with NUTS
# Pyro's NUTS on the same model is the reference. SVGD's posterior means
# should sit within a fraction of a posterior standard deviation of it.

# %%
pyro.set_rng_seed(0)
mcmc = MCMC(NUTS(logistic_regression), num_samples=40 if QUICK else 500, warmup_steps=40 if QUICK else 500,
            disable_progbar=True)
mcmc.run(train.x, train.y)
reference = mcmc.get_samples()["beta"]
gap = (post.samples["beta"].reshape(-1, train.x.shape[1]).mean(0) - reference.mean(0)) / reference.std(0)
print(f"largest |SVGD mean - NUTS mean| / NUTS sd over the 30 coefficients: {gap.abs().max():.2f}")

# %% [markdown]
# ## ArviZ, plots and files
# `to_arviz()` gives an `xarray.DataTree` with the posterior, the pointwise
# log-likelihood, the observed data and the engine's trace; every ArviZ
# function takes it. `save` writes netCDF atomically and `bk.load` reads it
# back exactly.

# %%
tree = post.to_arviz()
print(list(tree.children))
post.plot("forest", var_names=["beta"]).savefig(str(OUT / "forest.png"))
plt.show()  # inline in a notebook (and on the documentation site); nothing under Agg
post.save(OUT / "svgd.nc")
again = bk.load(OUT / "svgd.nc")
assert torch.equal(again.samples["beta"], post.samples["beta"])
print("saved and reloaded", OUT / "svgd.nc")
