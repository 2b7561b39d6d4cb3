"""Bayesian autoencoders: the model's density against networks built from torch.nn layers, the posterior
summaries against loops over draws, prior selection by DSWD, and the three-way comparison on digits."""

import math

import pytest
import torch
from conftest import FULL
from torch import nn
from torch.nn import functional as F

from bayeskit import Target
from bayeskit.datasets import digits_split, load_digits
from bayeskit.diagnostics import sliced_wasserstein
from bayeskit.inference import AdaptiveSGHMC
from bayeskit.models import BayesianAutoencoder, VariationalAutoencoder

F64 = torch.float64
ARCHITECTURES = {
    "dense": dict(input_shape=(64,), latent_dim=3, hidden=(10,)),
    "conv": dict(input_shape=(1, 8, 8), latent_dim=3, hidden=(6,), channels=(2, 4)),
    # 6 -> 3 -> 2 pixels a side: the decoder must come back through an odd side (as 28 -> 14 -> 7 -> 4 does)
    "conv, odd sides": dict(input_shape=(1, 6, 6), latent_dim=3, hidden=(6,), channels=(2, 4)),
}


def digits(num, offset=0, shape=(64,)):
    x = load_digits(F64).x[offset:offset + num]
    if len(shape) == 3 and shape[1:] != (8, 8):  # the centre of each image
        crop = [slice((8 - side) // 2, (8 - side) // 2 + side) for side in shape[1:]]
        return x.reshape(num, 1, 8, 8)[..., crop[0], crop[1]]
    return x.reshape(num, *shape)


def reference_network(bae, weights):
    """The same autoencoder as a chain of torch.nn.functional calls for one weight set (keeps gradients)."""
    def dense(name):
        return lambda h: F.linear(h, weights[f"{name}_w"].T, weights[f"{name}_b"])

    def conv(name):
        return lambda h: F.conv2d(h, weights[f"{name}_w"], weights[f"{name}_b"], stride=2, padding=1)

    def deconv(name, side):
        """Doubles the sides, then drops the first row (column) where the encoder's side there was odd."""
        def apply(h):
            out = F.conv_transpose2d(h, weights[f"{name}_w"], weights[f"{name}_b"], stride=2, padding=1)
            return out[..., out.shape[-2] - side[0]:, out.shape[-1] - side[1]:]
        return apply

    encoder, decoder, sides = [], [], [bae.input_shape[1:]]
    for i in range(len(bae.channels)):
        encoder += [conv(f"enc_conv{i}"), torch.relu]
        sides.append(tuple(math.ceil(side / 2) for side in sides[-1]))
    encoder.append(nn.Flatten())
    for i in range(len(bae.hidden) + 1):
        encoder += [dense(f"enc{i}"), torch.relu]
    encoder.pop()
    for i in range(len(bae.hidden) + 1):
        decoder += [dense(f"dec{i}"), torch.relu]
    if bae.channels:
        decoder.append(nn.Unflatten(1, (bae.channels[-1], *sides[-1])))
        for i in range(len(bae.channels)):
            decoder += [deconv(f"dec_deconv{i}", sides[-2 - i]), torch.relu]
    decoder.pop()
    return nn.Sequential(*map(_Module, encoder)), nn.Sequential(*map(_Module, decoder))


class _Module(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


def reference_log_joint(bae, weights, x):
    """log p(w) + sum_i log CB(x_i | f_w(x_i)), with torch.distributions and torch.nn only."""
    encoder, decoder = reference_network(bae, weights)
    logits = decoder(encoder(x)).reshape(x.shape[0], -1)
    log_lik = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x.reshape(x.shape[0], -1)).sum(-1)
    log_prior = sum(torch.distributions.Normal(bae.prior_loc[n].detach(), bae.prior_log_scale[n].detach().exp())
                    .log_prob(w).sum() for n, w in weights.items())
    return log_prior + log_lik.sum(), log_lik


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_the_pyro_model_is_the_autoencoder_built_from_torch_layers(float64, architecture):
    settings = ARCHITECTURES[architecture]
    bae = BayesianAutoencoder(**settings, prior_loc=0.1, prior_scale=0.7).to(F64)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # per-weight prior parameters, not all equal
        for value in bae.prior_log_scale.values():
            value.add_(0.1 * torch.randn(value.shape, generator=g, dtype=value.dtype))
    x = digits(7, shape=settings["input_shape"])
    target = Target.from_pyro(bae, x)
    z = target.init(3, torch.Generator().manual_seed(0))
    log_prob, score = target.log_prob_and_score(z)
    for point in range(3):
        weights = target.constrain(z[point])
        expected, _ = reference_log_joint(bae, weights, x)
        assert float(log_prob[point]) == pytest.approx(float(expected), rel=1e-10)
        assert float(target.log_prob(z[point])) == pytest.approx(float(expected), rel=1e-10)
    flat = z[1].clone().requires_grad_(True)
    expected_score, = torch.autograd.grad(reference_log_joint(bae, target.constrain(flat), x)[0], flat)
    torch.testing.assert_close(score[1], expected_score, rtol=1e-9, atol=1e-9)
    assert set(target.sites) == set(bae.sites) and target.dim == bae.num_weights


def test_gaussian_likelihood_and_minibatches(float64):
    bae = BayesianAutoencoder(64, 2, hidden=(5,), likelihood="gaussian", noise_scale=0.3).to(F64)
    x = digits(20)
    g = torch.Generator().manual_seed(0)
    weights = {name: 0.2 * torch.randn(shape, dtype=F64, generator=g) for name, shape in bae.sites.items()}
    trace = __import__("pyro").poutine.trace(__import__("pyro").poutine.condition(bae, weights)).get_trace(x)
    encoder, decoder = reference_network(bae, weights)
    expected = torch.distributions.Normal(decoder(encoder(x)), 0.3).log_prob(x).sum()
    assert float(trace.nodes["x"]["fn"].log_prob(x).sum()) == pytest.approx(float(expected), rel=1e-10)
    # a minibatch of 5 of the 20 images is scaled by 4: over many minibatches the log density's mean is the
    # full-data log density, within four standard errors (the estimator is unbiased only with that scale)
    target, full = Target.from_pyro(bae, x, subsample_size=5), Target.from_pyro(bae, x)
    z = full.init(2, torch.Generator().manual_seed(1))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        draws = torch.stack([target.log_prob(z) for _ in range(400)])
    standard_error = draws.std(0) / len(draws) ** 0.5
    assert target.subsampled and ((draws.mean(0) - full.log_prob(z)).abs() < 4 * standard_error).all()
    assert (standard_error > 0).all()  # the minibatches did differ


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shape=(64,), channels=(4,)), "input_shape must be \\(C, H, W\\)"),
    (dict(input_shape=(64,), likelihood="bernoulli"), "likelihood"),
    (dict(input_shape=(64,), latent_dim=0), "latent_dim"),
    (dict(input_shape=(64,), prior_scale=0.0), "prior_scale"),
])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BayesianAutoencoder(**kwargs)


def test_bad_images_are_refused_by_name():
    bae = BayesianAutoencoder(64, 2, hidden=(4,))
    with pytest.raises(ValueError, match="lie in \\[0, 1\\]"):
        bae(torch.full((3, 64), 2.0))
    with pytest.raises(ValueError, match="shape \\(n, 64\\)"):
        bae(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="lacks the weight sites"):
        bae.reconstruct({"w": torch.zeros(1, 1, 3)}, torch.zeros(2, 64))


# ------------------------------------------------------------------ posterior summaries
def small_posterior(bae, num_draws=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: 0.3 * torch.randn(2, num_draws, *shape, generator=g, dtype=F64) for name, shape in bae.sites.items()}


def test_summaries_average_over_draws_as_a_loop_does(float64):
    bae = BayesianAutoencoder(64, 3, hidden=(8,)).to(F64)
    draws = small_posterior(bae)
    x = digits(6)
    log_liks, means, codes = [], [], []
    for chain in range(2):
        for draw in range(3):
            weights = {name: value[chain, draw] for name, value in draws.items()}
            encoder, decoder = reference_network(bae, weights)
            logits = decoder(encoder(x))
            log_liks.append(reference_log_joint(bae, weights, x)[1])
            means.append(torch.distributions.ContinuousBernoulli(logits=logits).mean)
            codes.append(encoder(x))
    log_liks, means, codes = torch.stack(log_liks), torch.stack(means), torch.stack(codes)
    expected = torch.logsumexp(log_liks, 0) - math.log(6)
    torch.testing.assert_close(bae.log_likelihood(draws, x), expected, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(bae.log_likelihood(draws, x, batch_size=4), expected, rtol=1e-10, atol=1e-9)
    mean, sd = bae.reconstruct(draws, x)
    torch.testing.assert_close(mean, means.mean(0))
    torch.testing.assert_close(sd, means.std(0))
    torch.testing.assert_close(bae.latent(draws, x)[0], codes.mean(0))
    # max_draws thins evenly: first and last of the six
    torch.testing.assert_close(bae.reconstruct(draws, x, max_draws=2)[0], means[[0, 5]].mean(0))


def test_the_authors_test_nll_scores_the_draws_mean_lambda(float64):
    """average="parameter": log CB(x | mean over draws of sigmoid(logits)), normaliser included, per image;
    with one draw it is the mixture's value (regression: Tran et al.'s metric was not available before)."""
    bae = BayesianAutoencoder(64, 3, hidden=(8,)).to(F64)
    draws = small_posterior(bae)
    x = digits(6)
    lambdas = []
    for chain in range(2):
        for draw in range(3):
            encoder, decoder = reference_network(bae, {name: value[chain, draw] for name, value in draws.items()})
            lambdas.append(torch.sigmoid(decoder(encoder(x))))
    lam = torch.stack(lambdas).mean(0)
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))  # the Continuous Bernoulli's normaliser
    expected = (log_c + x * torch.log(lam) + (1 - x) * torch.log1p(-lam)).sum(-1)
    torch.testing.assert_close(bae.log_likelihood(draws, x, average="parameter"), expected, rtol=1e-8, atol=1e-8)
    chunked = bae.log_likelihood(draws, x, average="parameter", batch_size=4)  # images 0-3, then 4-5
    torch.testing.assert_close(chunked, expected, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="batch_size"):
        bae.log_likelihood(draws, x, batch_size=0)
    one = {name: value[:1, :1] for name, value in draws.items()}
    torch.testing.assert_close(bae.log_likelihood(one, x, average="parameter"), bae.log_likelihood(one, x))
    with pytest.raises(ValueError, match="average must be"):
        bae.log_likelihood(draws, x, average="mean")


def test_generate_decodes_the_mixtures_codes_with_posterior_draws(float64):
    bae = BayesianAutoencoder(64, 2, hidden=(5,)).to(F64)
    draws = small_posterior(bae, num_draws=1)
    for value in draws.values():
        value[1] = value[0]  # both draws the same, so any pick decodes alike

    class FixedCodes:
        def sample(self, n, seed=None):
            return torch.linspace(-1, 1, 2 * n, dtype=F64).reshape(n, 2)

    images = bae.generate(draws, FixedCodes(), 4, seed=0)
    _, decoder = reference_network(bae, {name: value[0, 0] for name, value in draws.items()})
    expected = torch.distributions.ContinuousBernoulli(logits=decoder(FixedCodes().sample(4))).mean
    torch.testing.assert_close(images, expected)


# ------------------------------------------------------------------ prior selection and training
def test_pretraining_and_dswd_bring_the_prior_predictive_towards_the_data(float64):
    torch.manual_seed(0)
    x = digits(120)
    held_out = digits(120, offset=120)
    bae = BayesianAutoencoder(64, 4, hidden=(16,)).to(F64)

    def prior_predictive_distance():
        with torch.no_grad():
            weights = bae.prior_draws(8)
            simulated = bae.observation(bae.decode(bae.encode(held_out, weights), weights)).sample()
        return float(sliced_wasserstein(simulated.reshape(-1, 64), held_out, num_projections=500,
                                        generator=torch.Generator().manual_seed(1)))

    standard = prior_predictive_distance()
    result = bae.fit_prior(x, num_steps=60, pretrain_steps=300, lr=0.01, num_projections=64, transform_steps=3,
                           batch_size=32, num_prior_draws=8, seed=0, progress=False)
    tuned = prior_predictive_distance()
    loss = result.trace["loss"]
    print(f"prior predictive SW to held-out digits: N(0, 1) {standard:.3f}, DSWD-tuned {tuned:.3f}; "
          f"DSWD {float(loss[:10].mean()):.3f} -> {float(loss[-10:].mean()):.3f}")
    assert tuned < 0.5 * standard
    assert loss[-10:].mean() < loss[:10].mean()
    assert result.meta["engine"] == "Fit" and result.meta["settings"]["name"] == "DSWD prior"
    assert set(result.samples) == {
        f"{group}.{name}" for group in ("loc", "log_scale") for name in bae.sites}


def test_pretraining_fits_the_sigmoid_output_lambda_not_the_likelihoods_mean(float64):
    """Tran et al. pretrain by least squares between the pixels and their decoder's sigmoid output, the
    Continuous Bernoulli's lambda. Fitting the CB mean instead (as before the audit) pushes lambda towards
    0 and 1, far from the pixels: a grey image of 0.2 needs lambda of about 0.03 to have mean 0.2."""
    x = torch.full((32, 64), 0.2, dtype=F64)
    bae = BayesianAutoencoder(64, 2, hidden=(8,)).to(F64)
    bae.pretrain(x, num_steps=300, lr=1e-2, batch_size=32, seed=0, progress=False)
    weights = {name: value.detach().unsqueeze(0) for name, value in bae.prior_loc.items()}
    outputs = bae.decode(bae.encode(x, weights), weights).squeeze(0)
    lam = torch.sigmoid(outputs)
    assert float((lam - 0.2).abs().max()) < 0.02, float(lam.mean())
    assert float(bae.observation(outputs).mean.mean()) > 0.3  # the CB mean at that lambda: not what was fitted


def test_prior_scales_learn_at_the_authors_log_variance_rate_after_the_warmup(float64):
    """Tran et al.: Adam at 1e-3 on the means and on the log-variances, the prior frozen for 50 batches while
    the directions learn. A log-variance rate of lr is a log-sd rate of lr / 2 (Adam ignores the gradient's
    scale), so no log-sd moves by more than lr / 2 per step, and none at all during the warm-up."""
    x = digits(64)
    bae = BayesianAutoencoder(64, 3, hidden=(8,)).to(F64)
    cheap = dict(num_projections=16, transform_steps=2, num_prior_draws=4, batch_size=32, pretrain_steps=20,
                 seed=0, progress=False)
    bae.fit_prior(x, num_steps=5, direction_warmup=5, **cheap)
    pretrained = {name: value.detach().clone() for name, value in bae.prior_loc.items()}
    assert all(bool((value == math.log(math.exp(-3))).all()) for value in bae.prior_log_scale.values())
    lr, steps = 0.01, 30
    bae.fit_prior(x, num_steps=steps, lr=lr, direction_warmup=10, **{**cheap, "pretrain_steps": 0})
    moved = torch.cat([(value.detach() + 3).abs().flatten() for value in bae.prior_log_scale.values()])
    # Adam's step is at most about lr per update (a little more early on); 20 updates after the warm-up
    assert float(moved.max()) <= 1.1 * (lr / 2) * (steps - 10)
    assert float(moved.max()) > 0.5 * (lr / 2) * (steps - 10)  # and the scales do learn
    shift = max(float((bae.prior_loc[n].detach() - pretrained[n]).abs().max()) for n in pretrained)
    assert 0.5 * lr * (steps - 10) < shift <= 1.1 * lr * (steps - 10)
    with pytest.raises(ValueError, match="scale_lr"):
        bae.fit_prior(x, num_steps=1, scale_lr=-1.0, **cheap)


def test_initial_weights_are_torchs_default_initialisation_per_chain():
    bae = BayesianAutoencoder(64, 3, hidden=(8,))
    init = bae.initial_weights(3, seed=0)
    assert set(init) == set(bae.sites)
    for layer in bae.layers:
        weight = init[f"{layer.name}_w"]
        assert weight.shape == (3, *layer.weight_shape)
        assert float(weight.abs().max()) <= layer.fan_in ** -0.5
        assert float(weight.abs().max()) > 0.8 * layer.fan_in ** -0.5
    assert not torch.equal(init["enc0_w"][0], init["enc0_w"][1])
    torch.testing.assert_close(bae.initial_weights(3, seed=0)["dec1_b"], init["dec1_b"])
    engine = AdaptiveSGHMC(bae, step_size=0.01, num_warmup=2, num_samples=2, num_chains=3, init=init)
    post = engine.run(digits(20).float(), seed=0, progress=False)
    assert post.samples["enc0_w"].shape == (3, 2, 64, 8)


def test_digits_split_keeps_prior_training_and_test_images_apart():
    data = load_digits()
    rows = {tuple(row.tolist()): i for i, row in enumerate(data.x)}  # a few digits repeat exactly: compare rows
    for prior in ("zeros", "all"):
        prior_x, train, test = digits_split(1, prior=prior)
        assert (len(prior_x), len(train), len(test)) == (178, 200, 300)
        index = [{rows[tuple(r.tolist())] for r in part} for part in (prior_x, train, test)]
        assert not (index[1] & index[2]) and not (index[0] & (index[1] | index[2]))
        labels = data.y[list(index[0])]
        assert bool((labels == 0).all()) if prior == "zeros" else len(set(labels.tolist())) == 10
    with pytest.raises(ValueError, match="prior must be"):
        digits_split(0, prior="ones")


def test_vae_fit_smoke_beats_the_mean_image(float64):
    """A smoke test: the fit improves held-out likelihood and beats predicting the mean image."""
    x, held_out = digits(200), digits(100, offset=200)
    vae = VariationalAutoencoder(64, 4, hidden=(32,)).to(F64)
    before = float(vae.log_likelihood(held_out).mean())
    result = vae.fit(x, num_steps=400, lr=3e-3, seed=0, progress=False)
    after = float(vae.log_likelihood(held_out).mean())
    # better than predicting every pixel by the training mean image
    mean_image = x.mean(0).clamp(1e-3, 1 - 1e-3)
    baseline = float(torch.distributions.ContinuousBernoulli(probs=mean_image).log_prob(held_out).sum(-1).mean())
    print(f"VAE held-out log-likelihood {before:.1f} -> {after:.1f} (mean image {baseline:.1f})")
    assert after > baseline and after > before
    assert result.trace["loss"][-20:].mean() < result.trace["loss"][:20].mean()


def test_sghmc_draws_export_r_hat_and_ess(float64, tmp_path):
    bae = BayesianAutoencoder(64, 2, hidden=(6,), prior_scale=0.5).to(F64)
    x = digits(40)
    post = AdaptiveSGHMC(bae, step_size=0.01, num_warmup=150, num_samples=40, num_chains=3).run(
        x, seed=0, progress=False)
    table = post.summary(var_names=["dec1_b"])
    assert len(table) == 64 and table["r_hat"].notna().all() and (table["ess_bulk"] > 0).all()
    tree = post.to_arviz()
    assert tree["log_likelihood"]["x"].shape == (3, 40, 40)
    loaded = __import__("bayeskit").load(post.save(tmp_path / "bae.nc"))
    torch.testing.assert_close(loaded.samples["enc0_w"], post.samples["enc0_w"])


# ------------------------------------------------------------------ the comparison of Tran et al.
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1] if FULL else [0])
def test_test_nll_of_the_autoencoders_on_digits(seed):
    """VAE, BAE with N(0, 1), BAE with DSWD priors tuned on the zeros and on every digit: held-out NLL.

    The models train on 200 images of the digits 1-9 (100 in CI) and are tested on 300 more, with the
    authors' prior rates and sampler settings (``benchmarks/bae_priors.py`` at full size). Each model must
    beat the mean-image predictor and no chain may be stuck. The prior tuned on images of the task's own
    distribution must beat the one tuned on the zeros, by far (16-18 nats at full size): the audit's
    finding, which fails if the prior data or the prior's fit regress to a prior that pins the posterior
    to the zeros. Whether the tuned prior beats N(0, 1) and the VAE (Tran et al.'s claim) is printed:
    at full size it beats N(0, 1) by about a nat and loses to the VAE by two or three.
    """
    zeros, train, test = digits_split(seed, num_train=200 if FULL else 100)
    every_digit = digits_split(seed, num_train=200 if FULL else 100, prior="all")[0]
    steps, prior_steps = (3000, 2000) if FULL else (600, 300)
    architecture = dict(latent_dim=8, hidden=(128,) if FULL else (64,))
    vae = VariationalAutoencoder(64, **architecture)
    vae.fit(train, num_steps=steps, seed=seed, progress=False)
    nll = {"VAE": -float(vae.log_likelihood(test).mean())}
    for name, prior_data in (("N(0, 1)", None), ("DSWD on zeros", zeros), ("DSWD on 0-9", every_digit)):
        bae = BayesianAutoencoder(64, **architecture)
        if prior_data is not None:
            # CI: a cheaper distance (64 directions, 3 ascent steps); FULL: the defaults
            cheap = {} if FULL else dict(num_projections=64, transform_steps=3)
            bae.fit_prior(prior_data, num_steps=prior_steps, pretrain_steps=steps, num_prior_draws=8, seed=seed,
                          progress=False, **cheap)
        # CI: step size 0.01, not the authors' 0.003: from torch's initialisation, 600 steps of 0.003 do not
        # reach a prior of sd 0.05 (the health report finds the chains stuck)
        post = AdaptiveSGHMC(bae, step_size=0.003 if FULL else 0.01, num_warmup=steps, num_samples=16,
                             thin=steps // 16,
                             init=bae.initial_weights(4, seed=seed)).run(train, seed=seed, progress=False)
        # a chain that ran off or stuck would still beat the mean image through the others: the health report
        # must not find one
        assert not [f for f in post.meta["health"] if f["check"] == "stuck_chain"], (name, post.meta["health"])
        nll[name] = -float(bae.log_likelihood(post, test).mean())
    mean_image = train.mean(0).clamp(1e-3, 1 - 1e-3)
    baseline = -float(torch.distributions.ContinuousBernoulli(probs=mean_image).log_prob(test).sum(-1).mean())
    print("held-out NLL per image: " + ", ".join(f"{k} {v:.1f}" for k, v in nll.items())
          + f"; mean-image predictor {baseline:.1f}")
    assert all(value < baseline for value in nll.values())
    assert nll["DSWD on 0-9"] < nll["DSWD on zeros"] - 5
