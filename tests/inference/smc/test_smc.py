"""SMC engines against the exact Kalman filter and RTS smoother of a linear Gaussian model."""

import math

import pytest
import torch
from conftest import FULL, assert_steps_are_pure

import bayeskit as bk
from bayeskit.inference import PaRIS, ParticleFilter, ParticleGibbs
from bayeskit.inference.smc import (
    backward_trajectory,
    cross_sum,
    fit_ssm,
    resample,
    smoothed_states,
    state_sum,
    surrogate_log_likelihood,
    sweep,
)
from bayeskit.inference.smc.core import LOG_BLOCK, PersistentLog, forward_step, initial_state
from bayeskit.inference.smc.proposals import MixtureOfExpertsProposal
from bayeskit.models import LinearGaussianSSM, StochasticVolatility
from bayeskit.models.ssm import NonlinearGrowth, StateSpaceModel
from bayeskit.resampling import RESAMPLING

pytestmark = pytest.mark.usefixtures("one_thread", "float64")


def scalar_model(**learn):
    return LinearGaussianSSM([[0.8]], [[1.0]], [[0.5]], [[1.0]], **learn)


def bivariate_model():
    return LinearGaussianSSM([[0.9, 0.2], [-0.1, 0.7]], [[1.0, 0.5]], [[0.3, 0.1], [0.1, 0.2]], [[0.4]],
                             m0=[0.5, -0.5], P0=[[1.0, 0.0], [0.0, 0.5]])


def data(model, num_steps, seed=1):
    return model.simulate(num_steps, seed=seed)[1]


# ------------------------------------------------------------------ resampling
@pytest.mark.parametrize("scheme", sorted(RESAMPLING))
def test_resampling_is_unbiased_and_respects_each_scheme_bounds(scheme):
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(7) * 1.5, 0)
    draws = resample(weights.expand(40000, 7).contiguous(), scheme)
    counts = torch.nn.functional.one_hot(draws, 7).sum(1).double()  # offspring per particle, per draw
    expected = 7 * weights
    se = counts.std(0) / math.sqrt(len(counts)) + 1e-12
    assert ((counts.mean(0) - expected).abs() < 4 * se + 1e-9).all(), (counts.mean(0), expected)
    if scheme in ("systematic", "residual"):  # at least floor(N W) copies of every particle
        assert (counts >= torch.floor(expected) - 1e-9).all()
    if scheme == "systematic":  # and at most ceil(N W)
        assert (counts <= torch.ceil(expected) + 1e-9).all()
    if scheme == "multinomial":  # its count variance is N W (1 - W)
        torch.testing.assert_close(counts.var(0), 7 * weights * (1 - weights), rtol=0.05, atol=0.0)


def test_resampling_refuses_an_unknown_scheme():
    with pytest.raises(ValueError, match="resampling"):
        resample(torch.ones(3) / 3, "sorted")


# ------------------------------------------------------------------ the filter
@pytest.mark.parametrize("scheme", sorted(RESAMPLING))
def test_log_evidence_is_unbiased_in_exp(scheme):
    model = scalar_model()
    y = data(model, 40)
    exact = float(model.kalman(y).log_likelihood)
    replicates = 4000 if FULL else 1500
    post = ParticleFilter(model, num_particles=50, resampling=scheme, num_chains=replicates).run(y, seed=3,
                                                                           progress=False)
    ratio = torch.exp(torch.tensor(post.meta["log_evidence"]) - exact)
    se = ratio.std() / math.sqrt(replicates)
    assert abs(float(ratio.mean()) - 1) < 4 * float(se), (float(ratio.mean()), float(se))
    # ... while log Z itself is biased downwards (Jensen): the test can tell the two apart
    assert float(torch.log(ratio).mean()) < 0


def test_filtering_means_and_ess_trace_follow_the_kalman_filter():
    model = bivariate_model()
    y = data(model, 30)
    kalman = model.kalman(y)
    post = ParticleFilter(model, num_particles=2000, ess_threshold=0.7, num_chains=8).run(y, seed=0,
                                                                             progress=False)
    means = post.trace["filtering_mean"].mean(1)
    sd = kalman.filtered_covs.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((means - kalman.filtered_means).abs() < 0.05 * sd + 0.02).all()
    assert post.trace["ess"].shape == (30, 8) and bool((post.trace["ess"] <= 2000 + 1e-6).all())
    # resampling happens exactly when the previous step's ESS fell below 0.7 N
    fell = post.trace["ess"][:-1] < 0.7 * 2000
    assert torch.equal(post.trace["resampled"][1:], fell)
    # the final cloud is exported with its weights and summarised with weighted statistics
    weighted_mean = (post.weights.unsqueeze(-1) * post.samples["x"]).sum((0, 1))
    torch.testing.assert_close(weighted_mean, kalman.filtered_means[-1], atol=0.05, rtol=0)
    assert post.summary() is not None


def test_particle_filter_resumes_from_a_checkpoint_exactly(tmp_path):
    model = scalar_model()
    y = data(model, 20)
    engine = ParticleFilter(model, num_particles=64, num_chains=3)
    whole = engine.run(y, seed=5, progress=False)
    path = tmp_path / "pf.ckpt"
    engine.run(y, seed=5, progress=False, checkpoint=path, checkpoint_every=5,
               callback=lambda step, state, info: step == 10)
    resumed = engine.run(y, seed=5, progress=False, checkpoint=path, resume=True)
    assert resumed.meta["log_evidence"] == whole.meta["log_evidence"]


@pytest.mark.parametrize("make_model", [bivariate_model, StochasticVolatility, NonlinearGrowth],
                         ids=["linear-gaussian", "stochastic-volatility", "nonlinear-growth"])
def test_a_compiled_filter_gives_the_eager_filter_s_particles(make_model):
    """``jit_compile=True`` compiles each step (resampling, move, weights) and keeps torch's generator:
    the same seed gives the same clouds and evidence as the eager filter, up to float rounding, also on a
    model whose transition depends on the time index (nonlinear growth's cos(1.2 t))."""
    model = make_model()  # here, not at collection: in float64
    y = data(model, 40)
    runs = [ParticleFilter(model, num_particles=200, num_chains=3, jit_compile=jit).run(y, seed=2, progress=False)
            for jit in (False, True)]
    eager, compiled = runs
    torch.testing.assert_close(torch.tensor(compiled.meta["log_evidence"]), torch.tensor(eager.meta["log_evidence"]),
                               rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(compiled.samples["x"], eager.samples["x"], rtol=1e-10, atol=1e-9)
    assert torch.equal(compiled.trace["resampled"], eager.trace["resampled"])
    assert bool(eager.trace["resampled"].any())  # the comparison covers resampling steps
    with pytest.raises(ValueError, match="jit_compile compiles the bootstrap filter"):
        ParticleFilter(model, proposal=MixtureOfExpertsProposal(), jit_compile=True)
    with pytest.raises(TypeError, match="jit_compile must be True, False or a torch.compile mode"):
        ParticleFilter(model, jit_compile="fast")


# ------------------------------------------------------------------------ PaRIS
def paris_errors(model, y, truth, functional, sizes, replicates, backward):
    """Bias, standard error and RMSE of PaRIS estimates over independent replicates, per N."""
    rows = []
    for n in sizes:
        post = PaRIS(model, functional, num_particles=n, backward=backward, num_chains=replicates).run(
            y, seed=n, progress=False)
        estimates = torch.tensor(post.meta["estimate"]).reshape(replicates, -1)
        error = estimates - truth.reshape(-1)
        rows.append({"N": n, "bias": error.mean(0), "se": error.std(0) / math.sqrt(replicates),
                     "rmse": error.pow(2).mean(0).sqrt()})
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("backward", ["reject", "exact"])
def test_paris_additive_functionals_converge_to_the_rts_smoother_as_n_grows(backward):
    model = scalar_model()
    y = data(model, 100 if FULL else 50)
    kalman = model.kalman(y)
    sizes = [25, 100, 400, 1600] if FULL else [25, 100, 400]
    replicates = (200 if FULL else 60) // (2 if backward == "exact" else 1)  # exact draws cost N^2
    for name, functional, truth in (("sum x_t", state_sum(), kalman.state_sum()),
                                    ("sum x_t-1 x_t", cross_sum(), kalman.cross_sum())):
        rows = paris_errors(model, y, truth, functional, sizes, replicates, backward)
        print(f"\nPaRIS ({backward}) {name}: truth {truth.flatten().tolist()}")
        for row in rows:
            print(f"  N={row['N']:5d}  bias {float(row['bias'][0]):+.4f} +- {float(row['se'][0]):.4f}  "
                  f"RMSE {float(row['rmse'][0]):.4f}")
        # Monte Carlo error falls like N^(-1/2): 16x the particles, a quarter of the RMSE. The bound sits between
        # that 0.25 and the 0.5 of an N^(-1/4) rate, with room for the ratio's own noise (each RMSE from 30-60
        # replicates: about 13-18 % relative error on the ratio).
        ratio = float(rows[-1]["rmse"][0]) / float(rows[0]["rmse"][0])
        print(f"  RMSE ratio N={rows[-1]['N']} / N={rows[0]['N']}: {ratio:.3f}")
        assert ratio < 0.38
        last = rows[-1]
        assert (last["bias"].abs() < 4 * last["se"] + 1e-3 * truth.abs().reshape(-1)).all()


def test_paris_smoothed_states_match_the_rts_means_in_two_dimensions():
    model = bivariate_model()
    y = data(model, 25)
    kalman = model.kalman(y)
    post = PaRIS(model, smoothed_states(25), num_particles=300, num_chains=16).run(y, seed=2, progress=False)
    estimates = torch.tensor(post.meta["estimate"])
    se = estimates.std(0) / 4
    assert estimates.shape[1:] == kalman.smoothed_means.shape
    # 50 comparisons: 4.5 standard errors, plus room for PaRIS's O(1/N) bias
    assert ((estimates.mean(0) - kalman.smoothed_means).abs() < 4.5 * se + 0.01).all()
    # the per-particle statistics weighted by the final weights are the estimate
    weights = torch.softmax(post.log_weights, -1)
    torch.testing.assert_close((weights[..., None, None] * post.samples["functional"]).sum(1),
                               torch.tensor(post.meta["estimate"]))


def test_reject_and_exact_backward_draws_have_the_same_law():
    model = scalar_model()
    y = data(model, 2)
    torch.manual_seed(0)
    state = sweep(model, y[:1], 1, 6)
    x = model.transition(1, state.x).sample()
    from bayeskit.inference.smc.core import backward_indices
    draws = {mode: backward_indices(model, 1, state.x.expand(4000, -1, -1), state.log_weights.expand(4000, -1),
                                    x.expand(4000, -1, -1), 3, mode) for mode in ("reject", "exact")}
    exact = torch.softmax(state.log_weights[0, None, :] + model.transition_log_prob(
        1, state.x[0, None, :, :], x[0, :, None, :]), -1)  # (i, l) backward kernel
    for indices in draws.values():
        frequencies = torch.nn.functional.one_hot(indices, 6).double().mean((0, 2))
        assert (frequencies - exact).abs().max() < 0.02


# --------------------------------------------------------------- particle Gibbs
def test_particle_gibbs_draws_trajectories_from_the_smoothing_law():
    model = scalar_model()
    y = data(model, 30)
    kalman = model.kalman(y)
    post = ParticleGibbs(model, num_particles=30, num_chains=8).run(y, num_steps=100, seed=0, progress=False)
    draws = post.samples["x"][:, 10:, :, 0].reshape(-1, 30)
    sd = kalman.smoothed_covs[:, 0, 0].sqrt()
    se = sd / math.sqrt(draws.shape[0] / 3)  # allows for autocorrelation of the chains
    assert ((draws.mean(0) - kalman.smoothed_means[:, 0]).abs() < 4 * se).all()
    ratio = draws.var(0) / sd ** 2
    assert (ratio - 1).abs().mean() < 0.15
    assert float(post.trace["update_rate"].mean()) > 0.5
    summary = post.summary(var_names=["x"])
    assert summary is not None


@pytest.mark.slow
def test_ppg_is_less_biased_than_paris_at_equal_cost():
    """The roll-out estimator's bias vanishes with the burn-in; PaRIS's falls only like 1/N.

    Cost is counted in particle-time-steps (both run linear-cost backward draws):
    PaRIS with 100 particles against PPG with 10 particles over 1 + 9 sweeps.
    """
    model = scalar_model()
    y = data(model, 50)
    truth = float(model.kalman(y).cross_sum())
    replicates = 4000 if FULL else 1000
    paris_n, ppg_n, iterations, num_warmup = 100, 10, 9, 4
    paris = PaRIS(model, cross_sum(), num_particles=paris_n, num_chains=replicates).run(y, seed=0,
                                                                 progress=False)
    ppg = ParticleGibbs(model, cross_sum(), num_particles=ppg_n, num_warmup=num_warmup, num_chains=replicates).run(
        y, num_steps=iterations, seed=0, progress=False)
    rows = {}
    for name, post in (("PaRIS", paris), ("PPG", ppg)):
        errors = torch.tensor(post.meta["estimate"]).reshape(-1) - truth
        rows[name] = (float(errors.mean()), float(errors.std() / math.sqrt(replicates)), float(errors.var()))
    per_iteration = ppg.sample_stats["functional"].reshape(replicates, iterations).mean(0) - truth
    print(f"\nsum x_t-1 x_t = {truth:.3f}; PaRIS N={paris_n}; PPG N={ppg_n}, {iterations} iterations after one "
          f"PaRIS sweep, averaged after {num_warmup}; {replicates} replicates")
    for name, (bias, se, variance) in rows.items():
        print(f"  {name:5s} bias {bias:+.4f} +- {se:.4f}  variance {variance:.3f}")
    print("  PPG bias per iteration: " + " ".join(f"{float(b):+.2f}" for b in per_iteration))
    assert abs(rows["PaRIS"][0]) > 3 * rows["PaRIS"][1]  # PaRIS's bias is there to be measured ...
    assert abs(rows["PPG"][0]) < abs(rows["PaRIS"][0]) - 2 * rows["PPG"][1]  # ... and PPG's is smaller
    assert abs(float(per_iteration[-1])) < abs(float(per_iteration[0]))  # and it decays over the iterations


# --------------------------------------------------------------------- learning
def test_the_surrogate_gradient_is_the_score_of_the_kalman_likelihood():
    model = scalar_model(learn=("A", "Q", "R"))
    y = data(model, 30)
    with torch.no_grad():
        model.A.fill_(0.6)  # away from the maximum, where the score is far from zero
    parameters = [model.A, model.Q, model.R]
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(model.kalman(y).log_likelihood, parameters)])
    groups, per_group = 6, 8
    with torch.no_grad():
        state = sweep(model, y, groups * per_group, 200, record=True, backward="exact")
    surrogate = surrogate_log_likelihood(model, y, state).reshape(groups, per_group).mean(1)
    estimates = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(surrogate[k], parameters,
                                                                                  retain_graph=True)])
                             for k in range(groups)])
    se = estimates.std(0) / math.sqrt(groups)
    assert ((estimates.mean(0) - exact).abs() < 4 * se + 0.02 * exact.abs()).all(), (estimates.mean(0), exact)


def exact_mle(y):
    model = scalar_model(learn=("A", "Q", "R"))
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -model.kalman(y).log_likelihood
        loss.backward()
        return loss
    optimizer.step(closure)
    return model.parameter_values()


PARIS_SCORE_BIAS = (
    "At full size (300 observations, 400 steps, 50 particles) PaRIS's Fisher-identity score, biased at finite N, "
    "ends on the Q-R ridge away from the exact MLE: A 0.831 / Q 0.361 / R 1.289 against 0.783 / 0.563 / 1.067, "
    "0.70 nats below the MLE's log-likelihood (Kalman), where PPG is at 0.785 / 0.550 / 1.076, 0.00 nats: the "
    "bias that PaRIS particle Gibbs removes (the papers'-claims issue). CI size passes for both.")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ppg", pytest.param("paris", marks=pytest.mark.xfail(
    FULL, strict=True, reason=PARIS_SCORE_BIAS))])
def test_maximum_likelihood_recovers_the_linear_gaussian_parameters(method):
    truth = scalar_model()
    y = data(truth, 300 if FULL else 150, seed=3)
    mle = exact_mle(y)
    model = LinearGaussianSSM([[0.3]], [[1.0]], [[1.5]], [[2.0]], learn=("A", "Q", "R"))
    post = fit_ssm(model, y, method=method, num_steps=400 if FULL else 150, num_particles=50, lr=0.03, seed=0,
                   progress=False)
    fitted = {k: float(v.reshape(-1)[0]) for k, v in post.samples.items() if k in ("A", "Q", "R")}
    exact = {k: float(mle[k].reshape(-1)[0]) for k in ("A", "Q", "R")}
    print(f"\n{method}: fitted {fitted}, exact MLE {exact}, truth A 0.8 Q 0.5 R 1.0")
    # Stated error: A within 0.05 of the exact MLE, the variances within 20 %.
    assert abs(fitted["A"] - exact["A"]) < 0.05
    assert abs(math.log(fitted["Q"] / exact["Q"])) < 0.2 and abs(math.log(fitted["R"] / exact["R"])) < 0.2
    assert post.trace["A"].shape[0] == post.meta["steps_completed"]
    assert float(model.A.detach()) == pytest.approx(fitted["A"])  # the model holds the averaged estimate


def exact_log_likelihood(y, A, Q, R):
    """The Kalman filter's log-likelihood of the scalar model with these parameters (C = 1)."""
    return float(LinearGaussianSSM([[A]], [[1.0]], [[Q]], [[R]]).kalman(y).log_likelihood)


@pytest.mark.slow
def test_score_climbing_reaches_the_maximum_likelihood():
    """Markov score climbing from a poor start, judged by the exact (Kalman) log-likelihood of where it ends:
    within 0.5 nats of the exact MLE's (measured 0.15; the start is 25 nats below). The parameters themselves
    are the wrong yardstick here: on 100 observations the likelihood is flat along a ridge trading Q against R,
    so a fit 0.15 nats from the top can sit at R = 0.47 against the MLE's 0.28."""
    y = data(scalar_model(), 100, seed=3)
    mle = {name: float(value.reshape(-1)[0]) for name, value in exact_mle(y).items() if name in ("A", "Q", "R")}
    start = {"A": 0.2, "Q": 0.2, "R": 3.0}
    model = LinearGaussianSSM([[start["A"]]], [[1.0]], [[start["Q"]]], [[start["R"]]], learn=("A", "Q", "R"))
    post = fit_ssm(model, y, method="score_climbing", num_steps=60, num_particles=30, num_chains=4, lr=0.03,
                   seed=0, progress=False)
    fitted = {name: float(post.samples[name].reshape(-1)[0]) for name in ("A", "Q", "R")}
    top, reached = exact_log_likelihood(y, **mle), exact_log_likelihood(y, **fitted)
    print(f"score climbing: fitted {fitted}, exact MLE {mle}; log-likelihood {reached:.3f} against {top:.3f} "
          f"(start {exact_log_likelihood(y, **start):.3f})")
    assert top - 0.5 < reached <= top + 1e-6


def test_fit_traces_every_iterate_and_leaves_the_model_at_their_average():
    model = StochasticVolatility(mu=0.0, phi=0.5, sigma=1.0, learn=("mu", "phi", "sigma"))
    y = data(StochasticVolatility(), 30)
    post = fit_ssm(model, y, num_steps=4, num_particles=20, lr=0.1, average_from=2, seed=0, progress=False)
    trace = post.trace["mu"]
    assert float(trace[0]) == 0.0 and len(set(trace.tolist())) == 4  # the start, then each update
    # the average of the iterates seen from step 2 on (the trace holds them)
    assert float(post.samples["mu"].reshape(())) == pytest.approx(float(trace[2:].mean()))
    assert float(model.mu.detach()) == pytest.approx(float(trace[2:].mean()))


def test_fit_refuses_a_model_without_learnable_parameters():
    with pytest.raises(ValueError, match="learn="):
        fit_ssm(scalar_model(), torch.zeros(5, 1))
    with pytest.raises(ValueError, match="method"):
        fit_ssm(scalar_model(learn=("A",)), torch.zeros(5, 1), method="em")


# ----------------------------------------------------------------- export, errors
def test_posteriors_export_to_arviz_and_survive_a_netcdf_round_trip(tmp_path):
    model = StochasticVolatility(-1.0, 0.9, 0.4)
    y = data(model, 20)
    post = ParticleGibbs(model, state_sum(), num_particles=20, num_chains=2).run(y, num_steps=12, seed=0,
                                                                   progress=False)
    tree = post.to_arviz()
    assert "x" in tree["posterior"] and tree["posterior"]["x"].dims == ("chain", "draw", "time", "state")
    loaded = bk.load(post.save(tmp_path / "ppg.nc"))
    torch.testing.assert_close(loaded.samples["x"], post.samples["x"])
    assert loaded.meta["estimate"] == post.meta["estimate"]
    smoother = PaRIS(model, state_sum(), num_particles=50, num_chains=2).run(y, seed=0, progress=False)
    loaded = bk.load(smoother.save(tmp_path / "paris.nc"))
    torch.testing.assert_close(loaded.log_weights, smoother.log_weights)


class Unbounded(StateSpaceModel):
    """A model with no transition bound, observed through a box of width 2 around the state."""

    def initial(self):
        return torch.distributions.Independent(torch.distributions.Normal(torch.zeros(1), torch.ones(1)), 1)

    def transition(self, t, x_prev):
        return torch.distributions.Independent(torch.distributions.Normal(x_prev, torch.ones(1)), 1)

    def observation(self, t, x):
        box = torch.distributions.Uniform(x - 1, x + 1, validate_args=False)  # log 0 = -inf outside the box
        return torch.distributions.Independent(box, 1)


def test_bad_input_is_refused_with_the_argument_named():
    model = scalar_model()
    with pytest.raises(TypeError, match="StateSpaceModel"):
        ParticleFilter(lambda: None)
    with pytest.raises(ValueError, match="num_particles"):
        ParticleFilter(model, num_particles=1)
    with pytest.raises(ValueError, match="resampling"):
        ParticleFilter(model, resampling="sorted")
    with pytest.raises(ValueError, match="ess_threshold"):
        ParticleFilter(model, ess_threshold=2.0)
    with pytest.raises(ValueError, match="backward"):
        PaRIS(model, state_sum(), backward="fast")
    with pytest.raises(ValueError, match=r"y must have shape \(T, 1\)"):
        ParticleFilter(model).run(torch.zeros(5, 2), progress=False)
    with pytest.raises(ValueError, match="num_chains"):
        ParticleFilter(model, num_chains=0)
    with pytest.raises(ValueError, match="functional"):
        PaRIS(model, lambda t, xp, x: torch.zeros(3)).run(torch.zeros(5, 1), progress=False)
    with pytest.raises(ValueError, match="transition_log_bound"):
        PaRIS(Unbounded(), state_sum(), backward="reject").run(torch.ones(5, 1), progress=False)
    with pytest.raises(ValueError, match="num_warmup"):
        ParticleGibbs(model, num_warmup=-1)


def test_impossible_observations_stop_the_filter_and_name_the_step():
    y = torch.ones(6, 1)
    y[3] = 100.0  # no particle can reach it
    with pytest.raises(bk.NonFiniteError, match="step 4") as caught:
        ParticleFilter(Unbounded(), num_particles=16).run(y, seed=0, progress=False)
    assert caught.value.posterior.meta["steps_completed"] == 3


# ------------------------------------------------------------------------ pure steps


@pytest.mark.parametrize("make, num_steps, series", [
    (lambda: ParticleFilter(scalar_model(), num_particles=16, num_chains=2), 80, 80),
    (lambda: PaRIS(scalar_model(), state_sum(), num_particles=16, num_chains=2), 80, 80),
    (lambda: ParticleGibbs(scalar_model(), state_sum(), num_particles=6, num_chains=2), 70, 6),
], ids=["ParticleFilter", "PaRIS", "ParticleGibbs"])
def test_a_step_returns_a_new_state_and_leaves_its_input_unchanged(make, num_steps, series):
    # Pure steps (conftest.assert_steps_are_pure); particle Gibbs keeps more draws than a log block.
    engine = make()
    y = data(scalar_model(), series)
    problem = engine.target(y)
    state = assert_steps_are_pure(engine, problem, num_steps)
    if isinstance(engine, ParticleGibbs):
        assert len(state["draws"]) == num_steps > LOG_BLOCK
        assert engine.load_state(problem, engine.state_dict(state))["draws"][-1] is state["draws"][-1]


def test_a_recorded_sweep_extends_its_logs_without_changing_the_earlier_states():
    model = scalar_model()
    y = data(model, 150)
    torch.manual_seed(0)
    state = initial_state(model, y[0], 2, 8, record=True)
    states = [state]
    for t in range(1, y.shape[0]):
        state = forward_step(model, state, y[t], record=True)
        states.append(state)
    for t, earlier in enumerate(states):  # each state's logs hold its own times only
        assert len(earlier.particles) == t + 1 and len(earlier.backward) == t
        assert earlier.particles[-1] is earlier.x and earlier.particles[t] is state.particles[t]
    assert [x is y for x, y in zip(state.particles, [s.x for s in states])] == [True] * len(states)
    assert backward_trajectory(state).shape == (2, 150, 1)


def test_the_persistent_log_indexes_iterates_and_rebuilds():
    items = list(range(300))
    log, logs = PersistentLog(), []
    for item in items:
        logs.append(log)
        log = log.append(item)
    assert len(log) == 300 and list(log) == items and log[-1] == 299 and log[130] == 130 and log[5:8] == [5, 6, 7]
    assert list(reversed(log)) == items[::-1] and list(PersistentLog.of(items)) == items
    assert all(list(old) == items[:count] for count, old in enumerate(logs))
    with pytest.raises(IndexError):
        log[300]
