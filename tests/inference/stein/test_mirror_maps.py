"""Mirror maps: every closed-form formula against autograd of the map itself."""

import pytest
import torch
from torch.distributions import constraints

from bayeskit.inference.stein.mirror_maps import (
    BoxMap,
    CustomMirrorMap,
    IdentityMap,
    MirrorTransform,
    OrthantMap,
    SimplexMap,
    mirror_for_support,
    resolve_mirror,
)

MAPS = {
    "identity": IdentityMap(),
    "orthant": OrthantMap(lower=-1.5),
    "box": BoxMap(lower=-2.0, upper=3.0),
    "simplex": SimplexMap(),
}


def _jacobian(mirror, eta):
    """d theta / d eta = inverse Hessian of psi, by autograd: (d, d) for one point."""
    return torch.autograd.functional.jacobian(mirror.to_primal, eta, create_graph=True)


def _points(dim=4, count=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, dim, generator=generator, dtype=torch.float64) * 1.5


@pytest.mark.parametrize("name", MAPS)
def test_round_trip(name):
    mirror = MAPS[name]
    eta = _points()
    theta = mirror.to_primal(eta)
    torch.testing.assert_close(mirror.to_dual(theta), eta)
    torch.testing.assert_close(mirror.site_to_dual(mirror.expand(theta)), eta)


@pytest.mark.parametrize("name", MAPS)
def test_inverse_hessian_and_hessian_match_autograd_jacobian(name):
    mirror = MAPS[name]
    v = _points(seed=1)
    for eta, vector in zip(_points(), v):
        jacobian = _jacobian(mirror, eta).detach()
        torch.testing.assert_close(mirror.inverse_hessian_apply(eta, vector), jacobian @ vector)
        torch.testing.assert_close(mirror.hessian_apply(eta, vector), torch.linalg.solve(jacobian, vector))


@pytest.mark.parametrize("name", MAPS)
def test_log_det_and_its_gradient_match_autograd(name):
    mirror = MAPS[name]
    for eta in _points():
        eta = eta.clone().requires_grad_(True)
        log_det = torch.linalg.slogdet(_jacobian(mirror, eta))[1]
        torch.testing.assert_close(mirror.log_det_inverse_hessian(eta.detach()), log_det.detach())
        # (the identity's Jacobian is constant: no graph, zero gradient)
        grad = torch.autograd.grad(log_det, eta)[0] if log_det.requires_grad else torch.zeros_like(eta)
        torch.testing.assert_close(mirror.grad_log_det_inverse_hessian(eta.detach()), grad)


DENSITIES = {  # a density on each map's domain, written on the reduced coordinates
    "identity": lambda t: torch.distributions.Normal(0.3, 1.7).log_prob(t).sum(-1),
    "orthant": lambda t: torch.distributions.Gamma(2.5, 1.2).log_prob(t + 1.5).sum(-1),
    "box": lambda t: torch.distributions.Beta(0.7, 2.0).log_prob((t + 2.0) / 5.0).sum(-1),
    "simplex": lambda t: torch.distributions.Dirichlet(torch.tensor([0.3, 2.0, 5.0, 0.8, 1.1], dtype=t.dtype))
    .log_prob(SimplexMap().expand(t)),
}


@pytest.mark.parametrize("name", MAPS)
def test_dual_score_is_the_score_of_the_density_of_eta(name):
    """s_eta = H^{-1} grad log p(theta) + grad log det = grad_eta [log p(grad psi*(eta)) + log det]."""
    mirror, log_p = MAPS[name], DENSITIES[name]
    eta = _points(count=5).requires_grad_(True)
    density_of_eta = log_p(mirror.to_primal(eta)) + mirror.log_det_inverse_hessian(eta)
    (expected,) = torch.autograd.grad(density_of_eta.sum(), eta)
    theta = mirror.to_primal(eta.detach()).requires_grad_(True)
    (primal_score,) = torch.autograd.grad(log_p(theta).sum(), theta)
    torch.testing.assert_close(mirror.dual_score(eta.detach(), primal_score), expected)


def test_dirichlet_dual_score_closed_form():
    """For Dirichlet(alpha) under the entropic map: s_eta = alpha_{1:d} - sum(alpha) theta (the paper's)."""
    alpha = torch.tensor([0.1, 90.0, 5.0, 0.1], dtype=torch.float64)
    mirror, eta = SimplexMap(), _points(dim=3, count=4)
    theta = mirror.to_primal(eta).requires_grad_(True)
    log_p = torch.distributions.Dirichlet(alpha).log_prob(mirror.expand(theta))
    (score,) = torch.autograd.grad(log_p.sum(), theta)
    torch.testing.assert_close(mirror.dual_score(eta, score), alpha[:-1] - alpha.sum() * theta.detach())


def test_simplex_geometry_stays_accurate_for_coordinates_below_machine_precision():
    """Coordinates of 1e-200 keep their relative accuracy, including the last one."""
    mirror = SimplexMap()
    eta = torch.tensor([0.0, -460.0, 2.0], dtype=torch.float64)  # theta_2 ~ 1e-200
    value = MirrorTransform(mirror, constraints.simplex)(eta)
    assert value[1] > 0 and abs(float(value[1].log()) - float(eta[1] - torch.logsumexp(
        torch.cat([eta, eta.new_zeros(1)]), 0))) < 1e-9
    # a tiny last coordinate: its reciprocal enters the Hessian
    eta_last = torch.tensor([460.0, 459.0], dtype=torch.float64)
    v = torch.tensor([1.0, -2.0], dtype=torch.float64)
    log_last = -torch.logsumexp(torch.cat([eta_last, eta_last.new_zeros(1)]), 0)
    expected_last_term = torch.exp(-log_last) * v.sum()
    hv = mirror.hessian_apply(eta_last, v)
    torch.testing.assert_close(hv.sum() - (v / mirror.to_primal(eta_last)).sum(), 2 * expected_last_term, rtol=1e-9,
                               atol=0)


def test_custom_map_reproduces_the_simplex_map_with_a_dense_hessian_fallback():
    simplex = SimplexMap()
    custom = CustomMirrorMap(simplex.to_dual, simplex.to_primal,
                             lambda theta, v: theta * v - theta * (theta * v).sum(-1, keepdim=True),
                             simplex.log_det_inverse_hessian)
    eta, v = _points(), _points(seed=3)
    torch.testing.assert_close(custom.inverse_hessian_apply(eta, v), simplex.inverse_hessian_apply(eta, v))
    torch.testing.assert_close(custom.hessian_apply(eta, v), simplex.hessian_apply(eta, v))
    torch.testing.assert_close(custom.grad_log_det_inverse_hessian(eta), simplex.grad_log_det_inverse_hessian(eta))
    with pytest.raises(TypeError, match="grad_psi_star"):
        CustomMirrorMap(simplex.to_dual, None, simplex.inverse_hessian_apply, simplex.log_det_inverse_hessian)


@pytest.mark.parametrize("support, expected", [
    (constraints.real, "identity"), (constraints.real_vector, "identity"), (constraints.positive, "orthant"),
    (constraints.greater_than(2.0), "orthant"), (constraints.unit_interval, "box"),
    (constraints.interval(-1.0, 4.0), "box"), (constraints.simplex, "simplex"),
    (constraints.independent(constraints.positive, 1), "orthant")])
def test_supports_pick_their_entropic_map(support, expected):
    assert mirror_for_support(support).name == expected


def test_unsupported_or_mismatched_supports_are_refused_with_the_site_name():
    with pytest.raises(ValueError, match=r"site 'L'.*supported: real.*simplex"):
        resolve_mirror("L", constraints.corr_cholesky, "auto")
    with pytest.raises(ValueError, match=r"'simplex' does not match site 'scale'"):
        resolve_mirror("scale", constraints.positive, "simplex")
    with pytest.raises(ValueError, match="mirror must be"):
        resolve_mirror("x", constraints.real, "hyperbolic")
    assert resolve_mirror("x", constraints.real, {"y": "simplex"}).name == "identity"
    with pytest.raises(ValueError, match="upper > lower"):
        BoxMap(1.0, 0.0)
