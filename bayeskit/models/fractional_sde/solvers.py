r"""Batched path solvers for SDEs driven by Markov-approximate fBM.

With :math:`\hat B^H = \sum_k \omega_k (Y_k - Y_k(0))` the driven SDE
:math:`dX = b(t, X)\,dt + \sigma(t, X) \circ d\hat B^H` becomes the Markov
SDE of the augmented state :math:`(X, Y_1, \dots, Y_K)` (per dimension),

.. math::

    dY_k &= (-\gamma_k Y_k + u)\,dt + dW, \\
    dX &= \Bigl[b + \sigma \sum_k \omega_k (-\gamma_k Y_k + u)\Bigr] dt + \sigma \Bigl(\sum_k \omega_k\Bigr) dW,

driven by one Brownian motion :math:`W` per dimension (``u = 0`` is the
prior; a control :math:`u(t, X, Y)` gives the variational posterior, whose
KL to the prior path law is :math:`\tfrac12 \int |u|^2 dt` by Girsanov).
The diffusion :math:`\sigma` is diagonal (one fBM per dimension).

Two schemes, both vectorised over paths (a Python loop over time steps only):

- ``"euler"``: Euler-Maruyama, the Ito integral;
- ``"heun"``: the stochastic Heun scheme, the Stratonovich integral (the
  pathwise sense of an fBM-driven SDE; both agree when :math:`\sigma` does not
  depend on :math:`X`).

With ``euler``, ``girsanov`` is exactly the KL between the discretised
posterior and prior chains, so the discrete ELBO is a true lower bound.
A control may also narrow the posterior's Brownian step (see ``solve``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["METHODS", "SDEPaths", "solve"]

METHODS = ("euler", "heun")

# The authors' stability rule for the fastest OU process: gamma_max * dt < 0.5.
MAX_SPEED_TIMES_STEP = 0.5


@dataclass
class SDEPaths:
    """Solution on the time grid.

    Attributes
    ----------
    times : ``(num_steps + 1,)``
    x : ``(num_steps + 1, batch, d)`` the state paths
    y : ``(num_steps + 1, batch, d, K)`` the OU paths, or only the final ``(batch, d, K)`` unless ``keep_y``
    girsanov : ``(batch,)`` :math:`\\tfrac12\\int|u|^2dt` along each path (zeros without a control)
    """

    times: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    girsanov: torch.Tensor


def _check(x0, y0, weights, gammas, times, method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if x0.dim() != 2:
        raise ValueError(f"x0 must be (batch, d), got shape {tuple(x0.shape)}")
    if y0.shape != (*x0.shape, gammas.shape[0]):
        raise ValueError(f"y0 must be (batch, d, K) = {(*x0.shape, gammas.shape[0])}, got {tuple(y0.shape)}")
    if weights.shape != gammas.shape:
        raise ValueError(f"weights {tuple(weights.shape)} and gammas {tuple(gammas.shape)} differ in shape")
    if times.dim() != 1 or times.numel() < 2 or not bool((times.diff() > 0).all()):
        raise ValueError("times must be an increasing 1-D tensor of at least two points")
    worst = float((gammas.max() * times.diff().max()).detach())
    if worst > MAX_SPEED_TIMES_STEP * (1 + 1e-4):  # float32 grids round
        raise ValueError(f"the fastest OU speed times the largest step is {worst:.3g} > {MAX_SPEED_TIMES_STEP}: "
                         "take smaller steps or a smaller gamma_max")


def solve(drift: Callable, diffusion: Callable | float | torch.Tensor, weights: torch.Tensor, gammas: torch.Tensor,
          x0: torch.Tensor, y0: torch.Tensor, times: torch.Tensor, *, control: Callable | None = None,
          method: str = "heun", noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
          keep_y: bool = False) -> SDEPaths:
    r"""Solve the augmented SDE on the grid ``times`` for a batch of paths.

    Parameters
    ----------
    drift : callable
        ``drift(t, x) -> (batch, d)``, the prior drift :math:`b`.
    diffusion : callable or tensor
        ``diffusion(t, x) -> (batch, d)`` or a tensor broadcastable to it (diagonal :math:`\sigma`).
    weights, gammas : ``(K,)``
        MA-fBM weights and OU speeds (cast to the state's dtype).
    x0 : ``(batch, d)``, y0 : ``(batch, d, K)``
        Initial state; the dtype and device of ``x0`` set those of the solve.
    times : ``(num_steps + 1,)``
        Increasing time grid.
    control : callable, optional
        ``control(step, t, x, y) -> (batch, d)``, the posterior control :math:`u`
        (``step`` indexes the interval ``[times[step], times[step + 1]]``), or a
        pair ``(u, scale)``: the posterior's Brownian increment is then
        :math:`u\,dt + \text{scale}\,\Delta W`, and the step's KL gains
        :math:`\tfrac12(\text{scale}^2 - 1 - \log \text{scale}^2)`.  In continuous time
        the optimal scale is 1 (Girsanov); on a grid, where the posterior
        step is narrower than the prior's near an informative observation,
        a scale below 1 removes an O(dt) gap of the ELBO.
    method : ``"heun"`` (Stratonovich, default) or ``"euler"`` (Ito).
    noise : ``(num_steps, batch, d)``, optional
        Standard normal draws to use (scaled by the square-root step here); else drawn from ``generator``.
    keep_y : bool
        Keep the whole OU paths (memory ``num_steps * batch * d * K``).
    """
    dtype, device = x0.dtype, x0.device
    times = torch.as_tensor(times, dtype=dtype, device=device)
    weights, gammas = weights.to(dtype=dtype, device=device), gammas.to(dtype=dtype, device=device)
    y0 = y0.to(dtype=dtype, device=device)
    _check(x0, y0, weights, gammas, times, method)
    steps = times.diff()
    if noise is None:
        noise = torch.randn(steps.numel(), *x0.shape, generator=generator, dtype=dtype,
                            device="cpu" if generator is not None else device).to(device)
    elif noise.shape != (steps.numel(), *x0.shape):
        raise ValueError(f"noise must be (num_steps, batch, d) = {(steps.numel(), *x0.shape)}, "
                         f"got {tuple(noise.shape)}")
    increments = noise * steps.sqrt()[:, None, None]
    weight_sum = weights.sum()

    def coefficients(step, t, x, y):
        """Drift of (x, y), the dW loading of x, 1/2 |u|^2 and the noise scale (None: 1)."""
        sigma = diffusion(t, x) if callable(diffusion) else diffusion
        u, scale, energy = None, None, None
        if control is None:
            y_drift = -gammas * y
        else:
            u = control(step, t, x, y)
            if isinstance(u, tuple):
                u, scale = u
            energy = 0.5 * (u**2).sum(-1)
            y_drift = -gammas * y + u.unsqueeze(-1)
        x_drift = drift(t, x) + sigma * (weights * y_drift).sum(-1)
        return x_drift, y_drift, sigma * weight_sum, energy, scale

    x, y = x0, y0
    xs, ys = [x0], [y0]
    girsanov = x0.new_zeros(x0.shape[0])
    for step in range(steps.numel()):
        t, dt, dw = times[step], steps[step], increments[step]
        x_drift, y_drift, loading, energy, scale = coefficients(step, t, x, y)
        if scale is not None:  # a posterior step of variance scale^2 dt: its KL to N(0, dt) adds to Girsanov's
            dw = scale * dw
            girsanov = girsanov + 0.5 * (scale**2 - 1 - 2 * torch.log(scale)).sum(-1)
        x_next = x + x_drift * dt + loading * dw
        y_next = y + y_drift * dt + dw.unsqueeze(-1)
        if method == "heun":
            x_drift2, y_drift2, loading2, energy2, _ = coefficients(step, t + dt, x_next, y_next)
            x_next = x + 0.5 * (x_drift + x_drift2) * dt + 0.5 * (loading + loading2) * dw
            y_next = y + 0.5 * (y_drift + y_drift2) * dt + dw.unsqueeze(-1)
            if energy is not None:
                energy = 0.5 * (energy + energy2)
        if energy is not None:
            girsanov = girsanov + energy * dt
        x, y = x_next, y_next
        xs.append(x)
        if keep_y:
            ys.append(y)
    return SDEPaths(times, torch.stack(xs), torch.stack(ys) if keep_y else y, girsanov)
