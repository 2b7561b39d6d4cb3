"""Bayesian autoencoders with priors chosen by distributional sliced-Wasserstein distance.

After Tran, Rossi, Milios, Michiardi, Bonilla and Filippone, "Model Selection
for Bayesian Autoencoders", NeurIPS 2021.  An autoencoder whose encoder and
decoder weights ``w`` are all random,

.. math::

    w_j \\sim \\mathcal N(\\mu_j, s_j^2), \\qquad
    x_i \\mid w \\sim p\\big(x_i \\mid f_w(x_i)\\big), \\qquad f_w = \\text{dec}_w \\circ \\text{enc}_w,

with a Continuous-Bernoulli (Loaiza-Ganem and Cunningham, NeurIPS 2019) or
Gaussian likelihood.  The prior's means and scales ``(mu, s)`` are learned
first, on data set aside for that purpose, by making data simulated from the
prior predictive look like the real data:

.. math:: \\min_{\\mu, s}\\ DSW_2\\Big(\\{\\tilde x \\sim p(x \\mid f_w(x)),\\ w \\sim p_{\\mu, s}\\},\\ \\{x\\}\\Big),

the distributional sliced-Wasserstein distance
(:class:`~bayeskit.diagnostics.DistributionalSlicedWasserstein`), with the
means started from an autoencoder pretrained by least squares
(:meth:`BayesianAutoencoder.fit_prior`).  The posterior over the weights
given the training images is then sampled with
:class:`~bayeskit.inference.AdaptiveSGHMC`: the model is an ordinary Pyro
model (:meth:`BayesianAutoencoder.forward`), so any bayeskit engine takes
it.  Reconstructions, latent codes and per-pixel uncertainty are averaged
over the draws; a Dirichlet-process mixture on the latent codes
(:class:`~bayeskit.models.DirichletProcessMixture`) turns the model into a
generator (:meth:`BayesianAutoencoder.generate`).

The prior's parameters live on a plain :class:`torch.nn.Module` rather than a
``PyroModule``: a ``PyroModule`` registers its parameters in Pyro's global
parameter store by attribute name, where two autoencoders (one with the
tuned prior, one with the standard prior, say) would overwrite each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from bayeskit._checks import check_finite, check_support, positive_int
from bayeskit.diagnostics import DistributionalSlicedWasserstein
from bayeskit.optim import Adam
from bayeskit.parallel import derived_seed, resolve_seed, seeded
from bayeskit.posterior import predictive_mixture
from bayeskit.runner import Fit

__all__ = ["BayesianAutoencoder", "VariationalAutoencoder", "LIKELIHOODS"]

LIKELIHOODS = ("continuous_bernoulli", "gaussian")
_ACTIVATIONS = {"relu": torch.relu, "leaky_relu": F.leaky_relu, "tanh": torch.tanh, "elu": F.elu}


# ------------------------------------------------------------------ architecture
@dataclass(frozen=True)
class _Layer:
    """One weight layer: ``kind`` is dense, conv (3x3, stride 2: a side of n becomes ceil(n / 2)) or deconv (4x4,
    stride 2: doubles a side, less one where ``trim`` says the encoder's side there was odd)."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    trim: tuple[int, int] = (0, 0)

    @property
    def bias_shape(self) -> tuple[int, ...]:
        if self.kind == "dense":
            return self.weight_shape[1:]
        return self.weight_shape[:1] if self.kind == "conv" else self.weight_shape[1:2]

    @property
    def fan_in(self) -> int:
        if self.kind == "dense":
            return self.weight_shape[0]
        return math.prod(self.weight_shape[1:]) if self.kind == "conv" else self.weight_shape[0] * 4


def _network(input_shape, latent_dim, hidden, channels, encoder_outputs):
    """The encoder's and decoder's ops: ``_Layer``, ``"act"``, ``("flatten",)`` or ``("unflatten", shape)``."""
    encoder, decoder = [], []
    if channels:
        if len(input_shape) != 3:
            raise ValueError(f"channels need images: input_shape must be (C, H, W), got {input_shape}")
        sides = [tuple(input_shape[1:])]  # each conv halves a side, rounding up: 28 -> 14 -> 7 -> 4 -> 2
        previous = input_shape[0]
        for i, width in enumerate(channels):
            encoder += [_Layer(f"enc_conv{i}", "conv", (width, previous, 3, 3)), "act"]
            previous = width
            sides.append(tuple(-(-side // 2) for side in sides[-1]))
        inner_shape = (channels[-1], *sides[-1])
    else:
        inner_shape = tuple(input_shape)
    flat = math.prod(inner_shape)
    encoder.append(("flatten",))
    widths = [flat, *hidden, encoder_outputs * latent_dim]
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        encoder += [_Layer(f"enc{i}", "dense", (fan_in, fan_out)), "act"]
    encoder.pop()  # the code is linear
    widths = [latent_dim, *reversed(hidden), flat]
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        decoder += [_Layer(f"dec{i}", "dense", (fan_in, fan_out)), "act"]
    if not channels:
        decoder.pop()  # the output is linear (logits or means)
    decoder.append(("unflatten", inner_shape))
    if channels:
        outputs = [*reversed(channels[:-1]), input_shape[0]]
        previous = channels[-1]
        for i, width in enumerate(outputs):
            target = sides[len(channels) - 1 - i]  # the side the matching conv saw: odd ones are one short of 2x
            decoder += [_Layer(f"dec_deconv{i}", "deconv", (previous, width, 4, 4), tuple(s % 2 for s in target)),
                        "act"]
            previous = width
        decoder.pop()
    return encoder, decoder


def _weight_layer(layer, h, w, b):
    """Apply one layer to ``h`` ``(P, n, *features)`` with weights ``(P, *shape)``: one batched call for all P."""
    if layer.kind == "dense":
        return torch.baddbmm(b.unsqueeze(1), h, w)
    # Convolutions of P weight sets at once: the P copies become channel groups.
    num, rows = h.shape[:2]
    grouped = h.transpose(0, 1).reshape(rows, num * h.shape[2], *h.shape[3:])
    weight = w.reshape(num * w.shape[1], *w.shape[2:])
    if layer.kind == "conv":
        out = F.conv2d(grouped, weight, b.reshape(-1), stride=2, padding=1, groups=num)
    else:
        # padding p and output padding q give 2 n + 2 - 2 p + q: (1, 0) doubles, (2, 1) gives 2 n - 1.
        out = F.conv_transpose2d(grouped, weight, b.reshape(-1), stride=2, padding=tuple(1 + t for t in layer.trim),
                                 output_padding=layer.trim, groups=num)
    return out.reshape(rows, num, -1, *out.shape[-2:]).transpose(0, 1)


def _apply(ops, h, weights, activation):
    for op in ops:
        if op == "act":
            h = activation(h)
        elif isinstance(op, _Layer):
            h = _weight_layer(op, h, weights[f"{op.name}_w"], weights[f"{op.name}_b"])
        elif op[0] == "flatten":
            h = h.reshape(*h.shape[:2], -1)
        else:
            h = h.reshape(*h.shape[:2], *op[1])
    return h


def _check_images(x, input_shape, likelihood, argument="x"):
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"{argument} must be a floating-point tensor, got {type(x).__name__}")
    if tuple(x.shape[1:]) != tuple(input_shape) or x.shape[0] < 1:
        raise ValueError(f"{argument} must have shape (n, {', '.join(map(str, input_shape))}), got {tuple(x.shape)}")
    check_finite(argument, x)
    if likelihood == "continuous_bernoulli":
        try:
            check_support(argument, x, dist.constraints.unit_interval, what="argument",
                          distribution="the Continuous-Bernoulli likelihood")
        except ValueError as error:
            raise ValueError(f"{argument} must lie in [0, 1] for the Continuous-Bernoulli likelihood: {error}. Scale "
                             "the images (e.g. divide by the maximum pixel value)") from None
    return x


class _Autoencoder(torch.nn.Module):
    """What the Bayesian and the variational autoencoder share: the architecture and the likelihood."""

    def __init__(self, input_shape, latent_dim, hidden, channels, likelihood, noise_scale, activation,
                 encoder_outputs):
        super().__init__()
        self.input_shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        if not self.input_shape or not all(isinstance(s, int) and s > 0 for s in self.input_shape):
            raise ValueError(f"input_shape must be positive ints, e.g. (64,) or (1, 8, 8); got {input_shape!r}")
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        hidden, channels = tuple(hidden), tuple(channels)
        if not all(isinstance(h, int) and h > 0 for h in (*hidden, *channels)):
            raise ValueError(f"hidden and channels must hold positive ints, got {hidden} and {channels}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if not noise_scale > 0:
            raise ValueError(f"noise_scale must be positive, got {noise_scale!r}")
        if activation not in _ACTIVATIONS and not callable(activation):
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)} or a callable, got {activation!r}")
        self.latent_dim, self.hidden, self.channels = latent_dim, hidden, channels
        self.likelihood, self.noise_scale = likelihood, float(noise_scale)
        self.activation = _ACTIVATIONS.get(activation, activation) if isinstance(activation, str) else activation
        self.encoder, self.decoder = _network(self.input_shape, latent_dim, hidden, channels, encoder_outputs)
        self.layers = [op for op in (*self.encoder, *self.decoder) if isinstance(op, _Layer)]

    @property
    def sites(self) -> dict[str, tuple[int, ...]]:
        """Weight name -> shape: ``{layer}_w`` and ``{layer}_b`` for every layer, encoder first."""
        shapes = {}
        for layer in self.layers:
            shapes[f"{layer.name}_w"], shapes[f"{layer.name}_b"] = layer.weight_shape, layer.bias_shape
        return shapes

    def encode(self, x, weights):
        """Codes ``(P, n, encoder outputs)`` of images ``x`` ``(n, *input_shape)`` under P weight sets
        ``(P, *shape)``."""
        num = next(iter(weights.values())).shape[0]
        return _apply(self.encoder, x.unsqueeze(0).expand(num, *x.shape), weights, self.activation)

    def decode(self, z, weights):
        """Likelihood parameters ``(P, n, *input_shape)`` (logits or means) of codes ``z`` ``(P, n, latent)``."""
        return _apply(self.decoder, z, weights, self.activation)

    def observation(self, outputs):
        """The likelihood ``p(x | f_w(x))`` given the decoder's outputs, one event per image."""
        if self.likelihood == "continuous_bernoulli":
            base = dist.ContinuousBernoulli(logits=outputs)
        else:
            base = dist.Normal(outputs, torch.as_tensor(self.noise_scale, dtype=outputs.dtype,
                                                        device=outputs.device))
        return base.to_event(len(self.input_shape))

    def _parameter(self, outputs):
        """What the decoder's outputs parametrise, on the pixels' scale: the Continuous Bernoulli's
        ``lambda = sigmoid(logits)`` (not its mean, which lies nearer 1/2), the Gaussian's mean."""
        return torch.sigmoid(outputs) if self.likelihood == "continuous_bernoulli" else outputs

    def _outputs_of(self, parameter):
        """The inverse of :meth:`_parameter`: decoder outputs for a parameter. A lambda of exactly 0 or 1 (a
        saturated sigmoid) is kept a float's epsilon inside, where the density is finite."""
        if self.likelihood != "continuous_bernoulli":
            return parameter
        return torch.logit(parameter, eps=torch.finfo(parameter.dtype).eps)

    def _point_weights(self, generator=None):
        """Freshly initialised weights (uniform in +-1/sqrt(fan-in), as torch's layers), ``name -> shape``."""
        weights = {}
        for layer in self.layers:
            bound = layer.fan_in ** -0.5
            for suffix, shape in (("w", layer.weight_shape), ("b", layer.bias_shape)):
                weights[f"{layer.name}_{suffix}"] = (2 * torch.rand(shape, generator=generator) - 1) * bound
        return weights


@dataclass(frozen=True)
class _AfterWarmup:
    """A learning rate that is 0 for the first ``warmup`` updates and ``lr`` after (Adam's moments still learn)."""

    lr: float
    warmup: int

    def __call__(self, t: int) -> float:
        return self.lr if t > self.warmup else 0.0


def _batches(x, batch_size, num_steps, seed):
    """Row indices of ``num_steps`` full minibatches, reshuffled each epoch, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, x.shape[0])
    per_epoch = x.shape[0] // batch_size  # each epoch's remainder is dropped so every batch is full
    epochs = -(-num_steps // per_epoch)
    rows = torch.cat([torch.randperm(x.shape[0], generator=generator)[: per_epoch * batch_size]
                      for _ in range(epochs)])
    return rows.reshape(-1, batch_size)[:num_steps].to(x.device)


def _mean_and_sd(values):
    """Mean and sd over the leading (draw) dimension; the sd of a single draw is zero."""
    return values.mean(0), values.std(0) if values.shape[0] > 1 else torch.zeros_like(values[0])


# ------------------------------------------------------------------ the Bayesian autoencoder
class BayesianAutoencoder(_Autoencoder):
    """A Bayesian autoencoder: an ordinary Pyro model over the weights of an encoder and a decoder.

    Parameters
    ----------
    input_shape : int or tuple
        Shape of one image: ``(64,)`` for flattened 8x8 digits, ``(1, 8, 8)``
        for convolutions.
    latent_dim : int
        Size of the code.
    hidden : tuple of int
        Widths of the dense hidden layers between the (flattened) features and
        the code; the decoder mirrors them.
    channels : tuple of int
        Channels of 3x3 stride-2 convolutions before the dense layers (empty:
        dense only); the decoder mirrors them with 4x4 stride-2 transposed
        convolutions.  Each halves the image sides, rounding up (28 x 28 images
        become 14, 7, 4, 2 pixels a side under four), and the decoder returns
        the input's sides exactly.
    likelihood : "continuous_bernoulli" or "gaussian"
        For pixel intensities in [0, 1] use the Continuous Bernoulli, the
        normalised Bernoulli density on [0, 1], as Tran et al. do.
    noise_scale : float
        Standard deviation of the Gaussian likelihood.
    prior_loc, prior_scale : float
        The initial prior ``N(prior_loc, prior_scale^2)`` for every weight
        (the "standard" prior is ``N(0, 1)``); :meth:`fit_prior` replaces it
        by learned per-weight means and scales.
    activation : "relu", "leaky_relu" (slope 0.01, Tran et al.'s), "tanh", "elu" or a callable

    Attributes
    ----------
    prior_loc, prior_log_scale : torch.nn.ParameterDict
        The prior's per-weight means and log standard deviations, by site.

    Examples
    --------
    A small autoencoder on 100 digits, sampled briefly (tutorial 05 fits the
    prior with :meth:`fit_prior` and samples for longer): held-out digits are
    far more likely under the posterior than images of noise.

    >>> import torch
    >>> from bayeskit.datasets import load_digits
    >>> from bayeskit.inference import AdaptiveSGHMC
    >>> from bayeskit.models import BayesianAutoencoder
    >>> digits = load_digits().x
    >>> x, x_test = digits[:100], digits[100:200]
    >>> bae = BayesianAutoencoder((64,), latent_dim=4, hidden=(32,))
    >>> engine = AdaptiveSGHMC(bae, step_size=0.01, num_warmup=150, num_samples=4, thin=10)
    >>> import warnings
    >>> from bayeskit import HealthWarning
    >>> with warnings.catch_warnings():  # 4 draws of a network's weights: the health report says so
    ...     warnings.simplefilter("ignore", HealthWarning)
    ...     post = engine.run(x, seed=0, progress=False)
    >>> held_out = bae.log_likelihood(post, x_test)
    >>> noise = bae.log_likelihood(post, torch.rand_like(x_test, generator=torch.Generator().manual_seed(0)))
    >>> held_out.shape, bool(held_out.mean() > noise.mean() + 100)
    (torch.Size([100]), True)
    """

    def __init__(self, input_shape, latent_dim: int = 10, *, hidden=(128,), channels=(),
                 likelihood: str = "continuous_bernoulli", noise_scale: float = 0.1, prior_loc: float = 0.0,
                 prior_scale: float = 1.0, activation="relu"):
        super().__init__(input_shape, latent_dim, hidden, channels, likelihood, noise_scale, activation,
                         encoder_outputs=1)
        if not prior_scale > 0:
            raise ValueError(f"prior_scale must be positive, got {prior_scale!r}")
        self.prior_loc = torch.nn.ParameterDict(
            {name: torch.nn.Parameter(torch.full(shape, float(prior_loc))) for name, shape in self.sites.items()})
        self.prior_log_scale = torch.nn.ParameterDict(
            {name: torch.nn.Parameter(torch.full(shape, math.log(prior_scale))) for name, shape in self.sites.items()})

    @property
    def num_weights(self) -> int:
        return sum(math.prod(shape) for shape in self.sites.values())

    def prior(self, like=None) -> dict[str, dist.Distribution]:
        """The current prior of each weight site (detached), on ``like``'s device and dtype."""
        options = {} if like is None else {"dtype": like.dtype, "device": like.device}
        return {name: dist.Normal(self.prior_loc[name].detach().to(**options),
                                  self.prior_log_scale[name].detach().exp().to(**options)).to_event(len(shape))
                for name, shape in self.sites.items()}

    def initial_weights(self, num_chains: int = 1, *, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Starting weights for samplers, ``name -> (num_chains, *shape)``: each chain a freshly initialised network.

        Uniform in :math:`\\pm 1/\\sqrt{\\text{fan-in}}`, torch's default for its layers and where Tran et
        al.'s chains start, whatever the prior. Pass it as ``init=`` to an engine: a draw from an
        ``N(0, 1)`` prior (the engines' default start) is a network whose activations grow by
        :math:`\\sqrt{\\text{fan-in}}` per layer, and chains started there settle in different modes.
        """
        positive_int("num_chains", num_chains)
        generator = torch.Generator().manual_seed(resolve_seed(seed))
        draws = [self._point_weights(generator) for _ in range(num_chains)]
        like = next(iter(self.prior_loc.values()))
        return {name: torch.stack([draw[name] for draw in draws]).to(like) for name in self.sites}

    # -------------------------------------------------------------- the Pyro model
    def forward(self, x, subsample_size: int | None = None):
        """The Pyro model: weights from the prior, then every image from the likelihood of its reconstruction.

        ``x`` is ``(n, *input_shape)``; ``subsample_size`` turns on
        minibatches (scaled by ``n / B``) for SG-MCMC.  Broadcasts over the
        leading particle/chain dimension that :class:`~bayeskit.Target` adds.
        Returns the decoder's outputs on the (mini)batch.
        """
        _check_images(x, self.input_shape, self.likelihood)
        weights = {name: pyro.sample(name, prior) for name, prior in self.prior(x).items()}
        batched = next(iter(weights.values())).dim() > len(next(iter(self.sites.values())))
        # Under Target's particle plate a weight is (P, 1, *shape): the 1 is the data plate's slot.
        flat = {name: value.reshape(-1, *self.sites[name]) for name, value in weights.items()}
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, device=x.device) as rows:
            images = x if subsample_size is None else x[rows]
            outputs = self.decode(self.encode(images, flat), flat)
            if not batched:
                outputs = outputs.squeeze(0)
            pyro.sample("x", self.observation(outputs), obs=images)
        return outputs

    # -------------------------------------------------------------- prior selection
    def prior_draws(self, num: int) -> dict[str, torch.Tensor]:
        """``num`` reparameterised draws of every weight, ``(num, *shape)``, differentiable in the prior."""
        return {name: self.prior_loc[name] + self.prior_log_scale[name].exp() * torch.randn(
                    num, *shape, dtype=self.prior_loc[name].dtype, device=self.prior_loc[name].device)
                for name, shape in self.sites.items()}

    def pretrain(self, x, *, num_steps: int = 2000, batch_size: int = 64, lr: float = 1e-3,
                 seed: int | None = None, progress: bool = True, callback=None, checkpoint=None,
                 checkpoint_every: int = 100, resume: bool = False):
        """Fit a plain autoencoder by least squares and centre the prior on its weights.

        Minimises the mean squared error between the images and the
        likelihood's parameter at their reconstruction (the Continuous
        Bernoulli's :math:`\\lambda = \\sigma(\\text{logits})`, the Gaussian's
        mean), by Adam on the shared loop (:class:`~bayeskit.runner.Fit`),
        as Tran et al.'s code does with its sigmoid decoder; they start the
        prior means there.  Returns the fit's result (``trace["loss"]``).  ``seed`` (None
        draws one, recorded in ``meta["seed"]``), ``progress``, ``callback``
        and the checkpoint arguments are those of :func:`bayeskit.runner.run_loop`.
        """
        x = _check_images(x, self.input_shape, self.likelihood)
        positive_int("num_steps", num_steps)
        seed = resolve_seed(seed)
        weights = {name: value.to(x).requires_grad_() for name, value in
                   self._point_weights(torch.Generator().manual_seed(seed)).items()}
        batches = _batches(x, batch_size, num_steps, seed)

        def loss(step):
            images = x[batches[step]]
            single = {name: value.unsqueeze(0) for name, value in weights.items()}
            # Tran et al.'s decoder ends in a sigmoid whose output is the Continuous Bernoulli's lambda, and
            # their pretraining fits that output to the pixels; the likelihood's mean would push lambda to the
            # extremes (the mean of CB(lambda) lies between lambda and 1/2)
            fitted = self._parameter(self.decode(self.encode(images, single), single))
            return ((fitted.squeeze(0) - images) ** 2).mean()

        result = Fit(loss, weights, lr=lr, name="pretrain").run(
            num_steps=num_steps, seed=seed, progress=progress, callback=callback, checkpoint=checkpoint,
            checkpoint_every=checkpoint_every, resume=resume)
        with torch.no_grad():
            for name, value in weights.items():
                self.prior_loc[name].copy_(value)
        return result

    def fit_prior(self, x, *, num_steps: int = 2000, batch_size: int = 64, num_prior_draws: int = 32,
                  num_projections: int = 200, transform_steps: int = 10, diversity: float = 100.0,
                  lr: float = 1e-3, scale_lr: float | None = None, direction_warmup: int = 50,
                  initial_scale: float = math.exp(-3), pretrain_steps: int = 2000,
                  seed: int | None = None, progress: bool = True, callback=None, checkpoint=None,
                  checkpoint_every: int = 100, resume: bool = False):
        r"""Learn the prior's means and scales by minimising DSWD to the images ``x``.

        Tran et al.'s procedure: pretrain an autoencoder (``pretrain_steps``,
        0 to keep the current means), set every prior scale to
        ``initial_scale`` (their ``log_var = -6``, i.e. sd :math:`e^{-3} \approx 0.05`),
        then for ``num_steps`` minibatches of ``batch_size`` images draw
        ``num_prior_draws`` weight sets from the prior, simulate images from
        the likelihood at each set's reconstruction (reparameterised), and
        take an Adam step down the distributional sliced-Wasserstein distance
        between the simulated and the real images:

        .. math:: (\mu, \log s) \leftarrow \mathrm{Adam}\Big(\nabla_{\mu, \log s}\,
                  DSW_2\big(\{\tilde x\}, \{x\}\big)\Big), \qquad
                  \tilde x \sim p\big(x \mid f_{\mu + s \odot \varepsilon}(x)\big).

        The means move at ``lr`` and the log standard deviations at
        ``scale_lr``.  Tran et al. optimise the log *variance* with the means'
        Adam rate (1e-3); Adam's step does not depend on the gradient's scale,
        so that is a log-sd rate of ``lr / 2``, the default: over their 2,000
        steps no scale can grow more than about :math:`e` -fold, and the prior
        stays tight around the pretrained autoencoder.  For the first
        ``direction_warmup`` batches (their 50) only the direction
        distribution learns; the prior holds still.  The direction
        distribution has ``num_projections`` directions and takes
        ``transform_steps`` ascent steps per batch with penalty ``diversity``
        (:class:`~bayeskit.diagnostics.DistributionalSlicedWasserstein`);
        Tran et al. use 1000 directions and 30 steps over 32 prior draws,
        about twenty times the cost per batch of these defaults with 8 draws;
        on the bundled digits their budget moves the tuned prior's held-out
        NLL by under a nat (``benchmarks/bae_priors.py``).
        ``x`` should be data set aside for this, not the training set, and
        of the same kind as it: with a prior this tight the posterior of a few
        hundred images stays near the pretrained autoencoder, so on the
        bundled digits a prior tuned on the zeros costs 15-16 nats of
        held-out NLL on the digits 1-9 against N(0, 1), while one tuned on
        images of every digit gains about one (``benchmarks/bae_priors.py``).
        Returns the result of the fit (``trace["loss"]`` is the DSWD).  ``seed``
        (None draws one, recorded in ``meta["seed"]``) seeds both phases;
        ``callback`` and the checkpoint arguments (:func:`bayeskit.runner.run_loop`)
        apply to the prior's fit, which a resumed run reaches by repeating the
        (deterministic) pretraining.
        """
        x = _check_images(x, self.input_shape, self.likelihood)
        seed = resolve_seed(seed)
        for name, value in (("num_steps", num_steps), ("num_prior_draws", num_prior_draws),
                            ("batch_size", batch_size)):
            positive_int(name, value)
        positive_int("pretrain_steps", pretrain_steps, minimum=0)
        positive_int("direction_warmup", direction_warmup, minimum=0)
        if not initial_scale > 0:
            raise ValueError(f"initial_scale must be positive, got {initial_scale!r}")
        scale_lr = lr / 2 if scale_lr is None else scale_lr
        for name, value in (("lr", lr), ("scale_lr", scale_lr)):
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        self.to(dtype=x.dtype, device=x.device)
        if pretrain_steps:
            self.pretrain(x, num_steps=pretrain_steps, batch_size=batch_size, seed=seed, progress=progress)
        with torch.no_grad():
            for value in self.prior_log_scale.values():
                value.fill_(math.log(initial_scale))
        with seeded(derived_seed(seed, 1), x.device):  # the direction network's initial weights, from the seed too
            distance = DistributionalSlicedWasserstein(math.prod(self.input_shape), num_projections=num_projections,
                                                       diversity=diversity, num_steps=transform_steps)
        batches = _batches(x, batch_size, num_steps, seed + 1)

        def loss(step):
            images = x[batches[step]]
            weights = self.prior_draws(num_prior_draws)
            simulated = self.observation(self.decode(self.encode(images, weights), weights)).rsample()
            return distance(simulated.reshape(-1, distance.transform.in_features),
                            images.reshape(images.shape[0], -1))

        optimizers, parameters = {}, {}
        for group, values, rate in (("loc", self.prior_loc, lr), ("log_scale", self.prior_log_scale, scale_lr)):
            adam = Adam(lr=_AfterWarmup(float(rate), direction_warmup))
            for name, value in values.items():
                parameters[f"{group}.{name}"], optimizers[f"{group}.{name}"] = value, adam
        # the direction network and its optimiser learn along with the prior: checkpoints keep them too
        carry = {"directions": distance.transform, "directions_optimizer": distance.optimizer}
        return Fit(loss, parameters, optimizer=optimizers, name="DSWD prior", carry=carry).run(
            num_steps=num_steps, seed=seed, progress=progress, callback=callback, checkpoint=checkpoint,
            checkpoint_every=checkpoint_every, resume=resume)

    # -------------------------------------------------------------- posterior summaries
    def weights_of(self, posterior) -> dict[str, torch.Tensor]:
        """The posterior's weight draws with chains and draws pooled: ``name -> (S, *shape)``."""
        samples = getattr(posterior, "samples", posterior)
        missing = [name for name in self.sites if name not in samples]
        if missing:
            raise ValueError(f"the posterior lacks the weight sites {missing[:3]}{'...' if len(missing) > 3 else ''}"
                             "; was it drawn from this autoencoder?")
        return {name: samples[name].reshape(-1, *shape) for name, shape in self.sites.items()}

    def _thinned_weights(self, posterior, x, max_draws):
        """The posterior's weight draws, thinned evenly to at most ``max_draws``, on ``x``'s device and dtype."""
        return self._thinned_draws(posterior, x, max_draws)[0]

    def _thinned_draws(self, posterior, x, max_draws):
        """:meth:`_thinned_weights` and the kept draws' normalised log-weights ``(S,)`` (equal for a dict)."""
        weights = self.weights_of(posterior)
        num = next(iter(weights.values())).shape[0]
        keep = torch.linspace(0, num - 1, min(num, max_draws)).round().long() if max_draws else torch.arange(num)
        if callable(getattr(posterior, "flat_draws", None)):
            log_w = posterior.flat_draws()[1][keep]
            log_w = log_w - torch.logsumexp(log_w, 0)
        else:
            log_w = torch.full((keep.numel(),), -math.log(keep.numel()), dtype=torch.float64)
        return {name: value[keep].to(x) for name, value in weights.items()}, log_w.to(x)

    def _outputs(self, posterior, x, max_draws):
        weights = self._thinned_weights(posterior, x, max_draws)
        return self.decode(self.encode(x, weights), weights)

    @torch.no_grad()
    def reconstruct(self, posterior, x, *, max_draws: int | None = None):
        """Posterior-averaged reconstructions of ``x`` and their per-pixel uncertainty.

        Returns ``(mean, sd)``, each ``(n, *input_shape)``: the mean and
        standard deviation over posterior draws of the likelihood's mean at
        each draw's reconstruction (the epistemic uncertainty of each pixel).
        ``max_draws`` thins the draws evenly to bound the cost.
        """
        x = _check_images(x, self.input_shape, self.likelihood)
        return _mean_and_sd(self.observation(self._outputs(posterior, x, max_draws)).mean)

    @torch.no_grad()
    def latent(self, posterior, x, *, max_draws: int | None = None):
        """Codes of ``x`` averaged over posterior draws, ``(n, latent_dim)``, and their sd over draws."""
        x = _check_images(x, self.input_shape, self.likelihood)
        return _mean_and_sd(self.encode(x, self._thinned_weights(posterior, x, max_draws)))

    def predictive(self, posterior, x, *, max_draws: int | None = None) -> torch.distributions.Distribution:
        r"""The posterior predictive of the reconstruction of each image ``x`` ``(n, *input_shape)``.

        .. math:: p(\tilde x_i \mid x_i, D) \approx \sum_s w_s\, p\big(\tilde x_i \mid f_{w_s}(x_i)\big),

        the likelihood at each posterior weight draw's reconstruction of :math:`x_i`, mixed with the
        draws' normalised weights :math:`w_s` (equal for a ``samples`` dict or an unweighted posterior).
        ``posterior`` is a :class:`~bayeskit.Posterior` or its ``samples`` dict; ``max_draws`` thins
        the draws evenly (their weights renormalised) to bound the cost.

        Returns a :class:`~torch.distributions.MixtureSameFamily` of batch shape ``(n,)`` and event
        shape ``input_shape``: each component is the joint likelihood of a whole image (its pixels
        depend on each other through the shared weights, so a mixture per pixel would be a different
        law). ``log_prob(x)`` is :meth:`log_likelihood`; ``mean`` the model-averaged reconstruction.
        """
        x = _check_images(x, self.input_shape, self.likelihood)
        weights, log_w = self._thinned_draws(posterior, x, max_draws)
        outputs = self.decode(self.encode(x, weights), weights)  # (S, n, *input_shape)
        return predictive_mixture(log_w, self.observation(outputs.movedim(0, 1)))

    @torch.no_grad()
    def log_likelihood(self, posterior, x, *, max_draws: int | None = None, average: str = "likelihood",
                       batch_size: int | None = None):
        r"""Log-likelihood of each image's reconstruction under the posterior: ``(n,)``.

        ``average="likelihood"`` (the default) averages the likelihoods over the draws, the
        Bayesian-model-averaged predictive (``predictive(posterior, x).log_prob(x)``):

        .. math:: \log \sum_s w_s\, p\big(x_i \mid f_{w_s}(x_i)\big),

        with the draws' normalised weights :math:`w_s` (:math:`1/S` when unweighted).
        ``average="parameter"`` averages the likelihood's parameter over the draws first and scores
        the image there, as Tran et al.'s code computes its test NLL:

        .. math:: \log p\Big(x_i \;\Big|\; \textstyle\sum_s w_s\, \lambda_s(x_i)\Big),

        with :math:`\lambda_s` the Continuous Bernoulli's parameter :math:`\sigma(\text{logits})` (its
        normaliser included) or the Gaussian's mean at draw :math:`s`. The two agree for one draw;
        over draws from several modes the mixture keeps each image's best mode, the averaged parameter
        blurs them. Either's negative mean over held-out images is a test NLL per image (nats, summed
        over the pixels). ``batch_size`` scores that many images at a time (the same values): every draw's
        activations for every image are held at once otherwise, which for 28 x 28 images, 128 draws and
        1,000 images is several GB a layer.
        """
        if batch_size is not None:
            positive_int("batch_size", batch_size)
            x = _check_images(x, self.input_shape, self.likelihood)
            return torch.cat([self.log_likelihood(posterior, part, max_draws=max_draws, average=average)
                              for part in x.split(batch_size)])
        if average == "likelihood":
            return self.predictive(posterior, x, max_draws=max_draws).log_prob(x)
        if average != "parameter":
            raise ValueError(f'average must be "likelihood" or "parameter", got {average!r}')
        x = _check_images(x, self.input_shape, self.likelihood)
        weights, log_w = self._thinned_draws(posterior, x, max_draws)
        parameter = self._parameter(self.decode(self.encode(x, weights), weights))  # (S, n, *input_shape)
        mean = torch.einsum("s,s...->...", log_w.exp(), parameter)
        return self.observation(self._outputs_of(mean)).log_prob(x)

    @torch.no_grad()
    def generate(self, posterior, mixture, num: int, *, seed: int | None = None):
        """New images: codes from ``mixture`` (fitted to latent codes), decoded by random posterior draws.

        ``mixture`` is anything with ``sample(n, seed=)``, such as a
        :class:`~bayeskit.models.DirichletProcessMixture` fitted to
        :meth:`latent` codes of the training images.  Returns the
        likelihood's means ``(num, *input_shape)``.
        """
        positive_int("num", num)
        seed = resolve_seed(seed)  # one seed for both draws: None must not pair fresh codes with fixed decoders
        codes = mixture.sample(num, seed=seed)
        weights = self.weights_of(posterior)
        generator = torch.Generator().manual_seed(seed)
        pick = torch.randint(next(iter(weights.values())).shape[0], (num,), generator=generator)
        # one draw per image: each image gets its own decoder, batched as P = num sets of one code
        chosen = {name: value[pick].to(codes) for name, value in weights.items()}
        return self.observation(self.decode(codes.unsqueeze(1), chosen)).mean.squeeze(1)


# ------------------------------------------------------------------ the VAE baseline
class VariationalAutoencoder(_Autoencoder):
    """A variational autoencoder (Kingma and Welling, ICLR 2014) with the same architecture: the baseline.

    The encoder outputs the mean and log-variance of ``q(z | x)``; the
    decoder's weights are point estimates; the code's prior is ``N(0, I)``.
    :meth:`fit` maximises the ELBO by Adam on the shared loop.
    :meth:`log_likelihood` scores the reconstruction from the posterior mean
    code, the same metric as :meth:`BayesianAutoencoder.log_likelihood`.
    """

    def __init__(self, input_shape, latent_dim: int = 10, *, hidden=(128,), channels=(),
                 likelihood: str = "continuous_bernoulli", noise_scale: float = 0.1, activation="relu"):
        super().__init__(input_shape, latent_dim, hidden, channels, likelihood, noise_scale, activation,
                         encoder_outputs=2)
        self.weights = torch.nn.ParameterDict(
            {name: torch.nn.Parameter(value) for name, value in self._point_weights().items()})

    def _weights(self):
        return {name: value.unsqueeze(0) for name, value in self.weights.items()}

    def code(self, x):
        """Mean and log-variance of ``q(z | x)``, each ``(n, latent_dim)``."""
        loc, log_var = self.encode(x, self._weights()).squeeze(0).chunk(2, dim=-1)
        return loc, log_var

    def elbo(self, x):
        """The ELBO of each image, ``(n,)``, one reparameterised code draw."""
        loc, log_var = self.code(x)
        z = loc + (0.5 * log_var).exp() * torch.randn_like(loc)
        log_p = self.observation(self.decode(z.unsqueeze(0), self._weights()).squeeze(0)).log_prob(x)
        kl = 0.5 * (loc**2 + log_var.exp() - 1 - log_var).sum(-1)
        return log_p - kl

    def fit(self, x, *, num_steps: int = 3000, batch_size: int = 64, lr: float = 1e-3, seed: int | None = None,
            progress: bool = True, callback=None, checkpoint=None, checkpoint_every: int = 100,
            resume: bool = False):
        """Maximise the mean ELBO over minibatches; returns the fit's result (``trace["loss"]`` = -ELBO).

        ``seed`` (None draws one, recorded in ``meta["seed"]``), ``progress``,
        ``callback`` and the checkpoint arguments are those of :func:`bayeskit.runner.run_loop`.
        """
        x = _check_images(x, self.input_shape, self.likelihood)
        positive_int("num_steps", num_steps)
        seed = resolve_seed(seed)
        self.to(dtype=x.dtype, device=x.device)
        with torch.no_grad():  # reproducible start
            for name, value in self._point_weights(torch.Generator().manual_seed(seed)).items():
                self.weights[name].copy_(value)
        batches = _batches(x, batch_size, num_steps, seed)
        return Fit(lambda step: -self.elbo(x[batches[step]]).mean(), dict(self.weights), lr=lr,
                   name="VAE").run(num_steps=num_steps, seed=seed, progress=progress, callback=callback,
                                   checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)

    @torch.no_grad()
    def reconstruct(self, x):
        """The likelihood's mean at the reconstruction from the posterior mean code, ``(n, *input_shape)``."""
        x = _check_images(x, self.input_shape, self.likelihood)
        return self.observation(self.decode(self.code(x)[0].unsqueeze(0), self._weights()).squeeze(0)).mean

    def predictive(self, x, *, num_codes: int = 32, seed: int | None = None) -> torch.distributions.Distribution:
        r"""The predictive of the reconstruction of each image ``x`` ``(n, *input_shape)`` under :math:`q(z \mid x)`.

        .. math:: p(\tilde x_i \mid x_i) \approx \frac1M \sum_{m=1}^M p\big(\tilde x_i \mid \mathrm{dec}(z_{im})\big),
            \qquad z_{im} \sim q(z \mid x_i),

        with ``num_codes`` = M codes per image drawn with ``seed`` (None draws one through
        :func:`bayeskit.parallel.resolve_seed`). The decoder's weights are point estimates (a fit,
        not a posterior), so this mixes over the codes' approximate posterior only, where
        :meth:`BayesianAutoencoder.predictive` mixes over weight draws: the counterpart of the
        Bayesian autoencoder's reconstruction predictive, not the marginal likelihood :math:`p(x)`
        (which would weight each code by :math:`p(z)/q(z \mid x)`). Batch shape ``(n,)``, event
        shape ``input_shape``, as there.
        """
        x = _check_images(x, self.input_shape, self.likelihood)
        num_codes = positive_int("num_codes", num_codes)
        generator = torch.Generator().manual_seed(resolve_seed(seed))
        loc, log_var = self.code(x)
        noise = torch.randn(num_codes, *loc.shape, generator=generator, dtype=loc.dtype).to(loc.device)
        z = loc + (0.5 * log_var).exp() * noise  # (M, n, latent)
        outputs = self.decode(z.reshape(1, -1, z.shape[-1]), self._weights())  # one weight set: P = 1
        outputs = outputs.reshape(num_codes, *x.shape).movedim(0, 1)  # (n, M, *input_shape)
        log_w = torch.full((num_codes,), -math.log(num_codes), dtype=x.dtype, device=x.device)
        return predictive_mixture(log_w, self.observation(outputs))

    @torch.no_grad()
    def log_likelihood(self, x):
        """Log-likelihood of each image's reconstruction from its posterior mean code, ``(n,)``."""
        x = _check_images(x, self.input_shape, self.likelihood)
        outputs = self.decode(self.code(x)[0].unsqueeze(0), self._weights()).squeeze(0)
        return self.observation(outputs).log_prob(x)
