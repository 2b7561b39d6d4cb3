"""find_modes: batched multi-start MAP, checked on targets whose modes are known in closed form."""


import pyro
import pyro.distributions as dist
import pytest
import torch

import bayeskit as bk
from bayeskit.inference import SGHMC, SVGD, find_modes


def two_bumps(z):
    """log of 0.7 N(-2, 0.5^2) + 0.3 N(3, 0.5^2) in each coordinate: modes at -2 (higher) and 3."""
    components = torch.stack([torch.log(torch.tensor(0.7)) + dist.Normal(-2.0, 0.5).log_prob(z),
                              torch.log(torch.tensor(0.3)) + dist.Normal(3.0, 0.5).log_prob(z)])
    return torch.logsumexp(components, 0).sum(-1)


def test_finds_both_modes_best_first():
    target = bk.Target.from_log_prob(two_bumps, dim=1)  # starts uniform on [-2, 2]: both basins
    modes = find_modes(target, num_restarts=16, num_steps=800, lr=0.1, seed=0)
    assert modes.points[0, 0] == pytest.approx(-2.0, abs=1e-3)  # the taller bump comes first
    assert torch.all(modes.log_density[:-1] >= modes.log_density[1:])
    found = modes.points[:, 0]
    assert ((found + 2).abs() < 1e-3).any() and ((found - 3).abs() < 1e-3).any()
    assert (((found + 2).abs() < 1e-3) | ((found - 3).abs() < 1e-3)).all()


def test_map_of_a_pyro_model_matches_the_closed_form():
    """Normal mean and log-normal scale: the MAP in unconstrained space is known exactly."""
    y = torch.tensor([0.3, -1.2, 2.0, 0.8, 1.1], dtype=torch.float64)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 10.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    modes = find_modes(model, y, num_restarts=4, num_steps=2000, lr=0.05, num_points=2, seed=1)
    # posterior mean = sum(y) / (n + 1/100)
    assert modes.values["mu"].shape == (2,)
    assert float(modes.values["mu"][0]) == pytest.approx(float(y.sum() / (len(y) + 0.01)), abs=1e-4)


def test_engines_start_from_modes():
    def model():
        pyro.sample("scale", dist.LogNormal(0.0, 0.3))

    modes = find_modes(model, num_restarts=8, num_steps=300, seed=0)
    svgd = SVGD(model, num_particles=8, init=modes.values)
    target = svgd.target()
    start = target.constrain(svgd.init(target, torch.Generator().manual_seed(0)).particles[0])
    torch.testing.assert_close(start["scale"], modes.values["scale"])  # the particles start at the modes
    sghmc = SGHMC(model, step_size=1e-6, num_chains=2, num_warmup=0, num_samples=1,
                  init={k: v[:2] for k, v in modes.values.items()}).run(seed=0, progress=False)
    assert torch.allclose(sghmc.samples["scale"][:, 0], modes.values["scale"][:2], rtol=1e-3)
    # modes of the density in unconstrained space (log scale ~ N(0, 0.3^2), Jacobian included): log scale 0,
    # not the LogNormal's own mode exp(-0.09); every restart should find it
    torch.testing.assert_close(modes.values["scale"], torch.ones(8), rtol=1e-3, atol=0)


@pytest.mark.parametrize("kwargs, error", [({"num_restarts": 0}, ValueError), ({"num_steps": 1.5}, ValueError),
                                           ({"num_points": 9}, ValueError), ({"lr": -1.0}, ValueError)])
def test_bad_arguments_are_refused(kwargs, error):
    target = bk.Target.from_log_prob(two_bumps, dim=1)
    with pytest.raises(error):
        find_modes(target, **{"num_restarts": 8, **kwargs})


def test_starts_repeat_the_good_modes_with_jitter():
    target = bk.Target.from_log_prob(two_bumps, dim=1)
    modes = find_modes(target, num_restarts=16, num_steps=800, lr=0.1, seed=0)
    best_only = modes.starts(6, within=1.0, jitter=0.01, seed=0)["theta"][:, 0]
    assert ((best_only + 2).abs() < 0.05).all() and len(set(best_only.tolist())) == 6
    assert modes.starts(1)["theta"] == modes.points[0]  # the best, untouched
    with pytest.raises(ValueError, match="num"):
        modes.starts(0)
