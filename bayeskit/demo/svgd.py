"""Demo stop ``svgd``.

SVGD on a Bayesian logistic regression of the bundled breast-cancer data.
"""

from __future__ import annotations

import time
from pathlib import Path

from bayeskit.demo.common import pandas_display, plot_trace, print_header, report_health

__all__ = ["run", "held_out_metrics"]


def held_out_metrics(post, x_test, y_test):
    """Accuracy and mean log predictive density of a logistic regression posterior (weighted draws honoured)."""
    from bayeskit.models.glm import predictive

    mixture = predictive(post, x_test)
    accuracy = ((mixture.mean > 0.5).to(y_test) == y_test).to(x_test).mean()
    return float(accuracy), float(mixture.log_prob(y_test).mean())


def run(out: Path, *, quick: bool, seed: int, progress: bool):
    """SVGD on a Bayesian logistic regression of the bundled breast-cancer data."""

    from bayeskit.datasets import load_breast_cancer
    from bayeskit.inference import SVGD
    from bayeskit.models import logistic_regression

    data = load_breast_cancer().standardized()
    train, test = data.split(test_fraction=0.2, seed=seed)
    num_steps = 100 if quick else 1000
    engine = SVGD(logistic_regression, num_particles=50 if quick else 100,
                  dims={"beta": ["feature"]}, coords={"feature": list(data.feature_names)})
    print_header(f"SVGD: logistic regression, breast cancer ({len(train.y)} train / {len(test.y)} test, "
                 f"{train.x.shape[1]} features)")
    start = time.perf_counter()
    post = engine.run(train.x, train.y, num_steps=num_steps, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    print(f"{engine.num_particles} particles, {num_steps} steps in {seconds:.1f} s")
    with pandas_display():
        print(post.summary(var_names=["alpha", "beta"], health=False))
    report_health("the SVGD particles", post)
    accuracy, lpd = held_out_metrics(post, test.x, test.y)
    print(f"held-out accuracy {accuracy:.3f}, mean log predictive density {lpd:.3f}")
    path = out / "svgd_posterior.nc"
    post.save(path)
    post.plot("forest", var_names=["beta"], path=out / "svgd_forest.png")
    post.plot("dist", var_names=["alpha"], path=out / "svgd_alpha.png")
    plot_trace(post, out / "svgd_trace.png")
    print(f"wrote {path}, {out / 'svgd_forest.png'}, {out / 'svgd_alpha.png'}, {out / 'svgd_trace.png'}")
    return post
