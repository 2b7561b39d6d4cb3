"""Bayesian multilayer perceptrons as ordinary Pyro models.

A fully connected network with Gaussian priors on every weight and bias,

.. math::

    W_l \\sim N(0, s^2),\\quad b_l \\sim N(0, s^2),\\quad
    h_0 = x,\\quad h_l = a(h_{l-1} W_l + b_l),\\quad f(x) = h_{L-1} W_L + b_L,

and a Bernoulli-logit, categorical or Gaussian likelihood on ``f(x)``.
Sites are named ``w0, b0, w1, b1, ...`` (and ``noise`` for a Gaussian
likelihood with unknown scale).  The model broadcasts over leading particle
or chain dimensions, so :meth:`bayeskit.Target.from_pyro` scores all chains
in one call, and ``subsample_size`` turns on minibatches for SG-MCMC.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from bayeskit.posterior import predictive_mixture

__all__ = ["bayesian_mlp", "mlp_forward", "predict", "predictive", "layer_sizes", "LIKELIHOODS"]

LIKELIHOODS = ("bernoulli", "categorical", "gaussian")
_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


def layer_sizes(num_inputs: int, hidden, num_outputs: int) -> list[tuple[int, int]]:
    """``[(in, out), ...]`` of each layer."""
    widths = [num_inputs, *hidden, num_outputs]
    return list(zip(widths[:-1], widths[1:]))


def mlp_forward(x: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor]], activation="relu"):
    """The network's output for inputs ``x`` ``(n, in)`` and layers ``[(W, b), ...]``.

    ``W`` is ``(*lead, in, out)`` and ``b`` ``(*lead, out)`` for any leading
    (draw, chain or particle) shape; the result is ``(*lead, n, out)``.
    Leading dimensions are flattened so each layer is one batched matmul.
    """
    act = _ACTIVATIONS[activation] if isinstance(activation, str) else activation
    first_w = weights[0][0]
    lead = first_w.shape[:-2]
    h = x
    for layer, (w, b) in enumerate(weights):
        w = w.reshape(-1, *w.shape[-2:])  # (L, in, out)
        b = b.reshape(-1, 1, b.shape[-1])  # (L, 1, out)
        h = torch.baddbmm(b, h.expand(w.shape[0], *h.shape[-2:]) if h.dim() == 2 else h, w)
        if layer < len(weights) - 1:
            h = act(h)
    return h.reshape(*lead, x.shape[0], h.shape[-1])


def predict(samples, x: torch.Tensor, activation="relu") -> torch.Tensor:
    """The network's output at ``x`` for every posterior draw: ``(chain, draw, n, out)``.

    ``samples`` is a :class:`~bayeskit.Posterior` or its ``samples`` dict
    (sites ``w0, b0, w1, b1, ...`` as :func:`bayesian_mlp` names them).
    """
    samples = getattr(samples, "samples", samples)
    num_layers = sum(1 for name in samples if name.startswith("w") and name[1:].isdigit())
    if num_layers == 0 or any(f"b{i}" not in samples for i in range(num_layers)):
        raise ValueError("samples must hold the sites w0, b0, w1, b1, ... of a bayesian_mlp posterior")
    weights = [(samples[f"w{i}"].to(x), samples[f"b{i}"].to(x)) for i in range(num_layers)]
    return mlp_forward(x, weights, activation)


def predictive(posterior, x: torch.Tensor, *, likelihood: str = "bernoulli", activation="relu",
               noise_scale: float | None = None) -> torch.distributions.Distribution:
    r"""The posterior predictive of :func:`bayesian_mlp` at ``x`` ``(B, p)``: batch ``(B,)``.

    :math:`p(y_i \mid x_i, D) \approx \sum_s w_s\, p(y_i \mid f_{\theta_s}(x_i))` over the
    posterior's (weighted) draws, as a :class:`~torch.distributions.MixtureSameFamily`
    of Bernoulli (logit output), Categorical (logits) or Gaussian components;
    ``likelihood``, ``activation`` and ``noise_scale`` as given to :func:`bayesian_mlp`
    (the Gaussian's sd is the posterior's ``noise`` draws unless ``noise_scale`` was fixed).
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    draws, log_weights = posterior.flat_draws()
    out = predict(draws, x, activation)  # (S, B, outputs)
    if likelihood == "bernoulli":
        components = dist.Bernoulli(logits=out[..., 0].T)
    elif likelihood == "categorical":
        components = dist.Categorical(logits=out.movedim(0, 1))
    else:
        if noise_scale is None and "noise" not in draws:
            raise ValueError("a gaussian predictive needs the posterior's 'noise' draws or the fixed noise_scale")
        sd = torch.as_tensor(noise_scale, dtype=x.dtype) if noise_scale is not None else draws["noise"].to(x)
        components = dist.Normal(out[..., 0].T, sd.expand(out.shape[0]))
    return predictive_mixture(log_weights.to(x), components)


def bayesian_mlp(x: torch.Tensor, y: torch.Tensor | None = None, *, hidden=(50,), num_outputs: int | None = None,
                 likelihood: str = "bernoulli", prior_scale: float = 1.0, noise_scale: float | None = None,
                 activation: str = "relu", subsample_size: int | None = None):
    """A Bayesian MLP on inputs ``x`` ``(n, p)`` and targets ``y`` ``(n,)``.

    Parameters
    ----------
    hidden : sequence of int
        Widths of the hidden layers.
    num_outputs : int, optional
        Output width: 1 for ``"bernoulli"`` and ``"gaussian"``; the number of
        classes for ``"categorical"`` (default ``y.max() + 1``).
    likelihood : "bernoulli", "categorical" or "gaussian"
    prior_scale : float
        Standard deviation ``s`` of the Gaussian prior on every weight and bias.
    noise_scale : float, optional
        The Gaussian likelihood's standard deviation; None makes it a latent
        site ``noise ~ HalfNormal(1)``.
    activation : "relu", "tanh" or a callable
    subsample_size : int, optional
        Minibatch size: each call sees a random minibatch, scaled by ``n / B``.

    Returns
    -------
    Tensor
        The network's output on the (mini)batch, ``(..., batch)`` for one
        output and ``(..., batch, num_outputs)`` otherwise.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if x.dim() != 2:
        raise ValueError(f"x must have shape (n, p), got {tuple(x.shape)}")
    if y is not None and y.shape[:1] != x.shape[:1]:
        raise ValueError(f"y must have {x.shape[0]} rows like x, got shape {tuple(y.shape)}")
    if num_outputs is None:
        if likelihood == "categorical" and y is None:
            raise ValueError("num_outputs is needed for a categorical likelihood without y")
        num_outputs = int(y.max()) + 1 if likelihood == "categorical" else 1
    options = {"dtype": x.dtype, "device": x.device}
    scale = torch.as_tensor(prior_scale, **options)
    weights = []
    for layer, (fan_in, fan_out) in enumerate(layer_sizes(x.shape[1], hidden, num_outputs)):
        w = pyro.sample(f"w{layer}", dist.Normal(torch.zeros(fan_in, fan_out, **options), scale).to_event(2))
        b = pyro.sample(f"b{layer}", dist.Normal(torch.zeros(fan_out, **options), scale).to_event(1))
        weights.append((w, b))
    noise = None
    if likelihood == "gaussian":
        noise = (torch.as_tensor(noise_scale, **options) if noise_scale is not None
                 else pyro.sample("noise", dist.HalfNormal(torch.ones((), **options))))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size, device=x.device) as index:
        rows = x if subsample_size is None else x[index]
        # Under a particle plate, weights are (P, 1, in, out): the 1 is the data plate's slot.
        out = mlp_forward(rows, [(w.reshape(-1, *w.shape[-2:]) if w.dim() > 2 else w,
                                  b.reshape(-1, b.shape[-1]) if b.dim() > 1 else b) for w, b in weights],
                          activation)
        obs = None if y is None else y[index]
        if likelihood == "categorical":
            pyro.sample("y", dist.Categorical(logits=out), obs=obs)
            return out
        out = out.squeeze(-1)
        if likelihood == "bernoulli":
            pyro.sample("y", dist.Bernoulli(logits=out), obs=obs)
        else:
            if noise is not None and noise.dim() > 0:
                noise = noise.reshape(-1, 1)  # one scale per particle, broadcast over rows
            pyro.sample("y", dist.Normal(out, noise), obs=obs)
        return out
