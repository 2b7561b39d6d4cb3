"""Demo stop ``moe``.

Mixtures of experts on the radon survey: a GLM, a 2-expert MoE and a mixed MoE with county gate effects.
"""

from __future__ import annotations

import time
from pathlib import Path

from bayeskit.demo.common import pandas_display, print_header, report_health

__all__ = ["run"]

# What a stop says when its chains are flagged: the MoE's two experts overlap, and the mixed MoE's gate has 85
# county effects; at the demo's length neither has mixed (r_hat up to 1.2 and 1.5 at full size).
UNMIXED = {"MoE": "(shown as measured: the two experts overlap, and its chains have not mixed at this length; "
                  "16 times the steps left r_hat at 1.12, so the comparison below is of these draws)",
           "mixed MoE": "(shown for its held-out score only: its chains have not mixed at this length, so its "
                        "score is that of these draws and its summaries are not the posterior's)"}
# The GLM's chains mix with 16 times the steps, every 4th kept (max r_hat 1.003, against 1.10 at 1,000 steps)
LONGER = {"GLM": {"num_samples": 4000, "thin": 4}}


def run(out: Path, *, quick: bool, seed: int, progress: bool):
    """Mixtures of experts on the radon survey: a GLM, a 2-expert MoE and a mixed MoE with county gate effects."""
    from bayeskit import Target
    from bayeskit.datasets import load_radon
    from bayeskit.inference import SGHMC, find_modes
    from bayeskit.models import MixtureOfExperts

    data = load_radon()
    train, test = data.split(test_fraction=0.2, seed=seed)
    counties, names = list(data.group_labels["county"]), data.feature_names
    print_header(f"Mixture of experts: log radon in {len(data.y)} Minnesota homes, {len(counties)} counties "
                 f"({len(train.y)} train / {len(test.y)} test)")
    # Readings are rounded (tied homes): a noise floor keeps experts off zero-sd spikes (see tutorial 04).
    priors = {"intercept_scale": 2.5, "noise_floor": 0.1, "covariate_names": names}
    pilot_steps, warmup, draws = (100, 100, 100) if quick else (500, 1000, 1000)
    models = {"GLM": MixtureOfExperts(1, **priors), "MoE": MixtureOfExperts(2, **priors),
              "mixed MoE": MixtureOfExperts(2, levels={"county": counties}, **priors)}
    scores, posts = {}, {}
    for name, moe in models.items():
        fit, held_out = ({"groups": {"county": part.groups["county"]}} if moe.level_sizes else {}
                         for part in (train, test))
        began = time.perf_counter()
        starts = find_modes(moe, train.x, train.y, num_restarts=16, num_steps=100 if quick else 400, seed=seed,
                            progress=progress, **fit).starts(4, seed=seed)
        # A short pilot sets a diagonal mass (its relabelled draws' precision): the posterior is badly scaled.
        pilot = SGHMC(moe, step_size=0.01, num_chains=4, num_warmup=pilot_steps, num_samples=pilot_steps,
                      init=starts).run(train.x, train.y, seed=seed, progress=progress, **fit)
        pilot = moe.relabel(pilot) if moe.has_gate else pilot
        target = Target.from_pyro(moe, train.x, train.y, **fit)
        mass = 1 / target.unconstrain(pilot.samples).reshape(-1, target.dim).var(0)
        length = {"num_samples": draws} if quick else LONGER.get(name, {"num_samples": draws})
        engine = SGHMC(moe, step_size=0.05, friction=0.2, mass=mass, num_chains=4, num_warmup=warmup, **length,
                       init={site: value[:, -1] for site, value in pilot.samples.items()}, dims=moe.dims,
                       coords=moe.coords)
        post = engine.run(train.x, train.y, seed=seed, progress=progress, **fit)
        posts[name] = moe.relabel(post) if moe.has_gate else post
        scores[name] = moe.log_predictive_density(post, test.x, test.y, **held_out)
        worst = posts[name].summary(health=False)["r_hat"].max()
        print(f"{name:>10}: held-out mean log predictive density {float(scores[name].mean()):.3f} "
              f"(+- {float(scores[name].std() / len(test.y) ** 0.5):.3f}), max r_hat {worst:.3f}, "
              f"{time.perf_counter() - began:.1f} s")
        report_health(f"the {name} chains", posts[name], if_unhealthy=UNMIXED.get(name))
    for better, worse in [("MoE", "GLM"), ("mixed MoE", "MoE")]:
        gain = scores[better] - scores[worse]
        print(f"{better} - {worse}: {float(gain.mean()):+.3f} +- {float(gain.std() / len(gain) ** 0.5):.3f} "
              "per test home")
    moe, post = models["MoE"], posts["MoE"]
    with pandas_display():
        print(post.summary(var_names=["gate_intercept", "gate_coef", "expert_intercept", "expert_coef",
                                      "expert_scale"], health=False))
    share = moe.responsibilities(post, train.x, train.y).mean(0)
    print("share of training homes per expert: " + ", ".join(f"{float(v):.2f}" for v in share))
    path = out / "moe_posterior.nc"
    post.save(path)
    post.plot("forest", var_names=["expert_intercept", "expert_coef", "expert_scale"], path=out / "moe_forest.png")
    print(f"wrote {path}, {out / 'moe_forest.png'}")
    return post
