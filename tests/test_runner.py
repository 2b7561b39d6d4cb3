"""The shared runner: checkpoints, callbacks, non-finite detection, errors with their step."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from bayeskit import NonFiniteError, Target
from bayeskit.inference import SVGD
from bayeskit.optim import Adam
from bayeskit.runner import Fit, Parameters


def minibatch_model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", len(y), subsample_size=16) as index:
        pyro.sample("y", dist.Normal((x[index] * w).sum(-1), 1.0), obs=y[index])


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 2, generator=g)
    return x, x @ torch.tensor([1.0, -1.0]) + torch.randn(100, generator=g)


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path):
    # minibatches come from the global RNG, so this also checks that its state is restored
    x, y = data()
    engine = SVGD(minibatch_model, num_particles=10)
    straight = engine.run(x, y, num_steps=30, seed=3, progress=False)
    path = tmp_path / "svgd.ckpt"
    engine.run(x, y, num_steps=12, seed=3, progress=False, checkpoint=path, checkpoint_every=5)
    resumed = engine.run(x, y, num_steps=30, seed=3, progress=False, checkpoint=path, resume=True)
    assert torch.equal(resumed.samples["w"], straight.samples["w"])
    assert torch.equal(resumed.trace["phi_norm"], straight.trace["phi_norm"])
    assert resumed.meta["steps_completed"] == 30


def test_a_trace_longer_than_its_blocks_resumes_and_stops_exactly(tmp_path):
    """The trace joins its per-step entries in blocks (runner.TRACE_BLOCK); a resume in the middle of a
    block, and a callback stop there, must give the entries of the uninterrupted run, in order."""
    x, y = data()
    engine = SVGD(minibatch_model, num_particles=6)
    straight = engine.run(x, y, num_steps=150, seed=4, progress=False)
    path = tmp_path / "svgd.ckpt"
    engine.run(x, y, num_steps=150, seed=4, progress=False, checkpoint=path, checkpoint_every=25,
               callback=lambda step, state, info: step == 80)  # the last checkpoint: step 75
    resumed = engine.run(x, y, num_steps=150, seed=4, progress=False, checkpoint=path, resume=True)
    stopped = engine.run(x, y, num_steps=150, seed=4, progress=False, callback=lambda step, state, info: step == 97)
    for name, column in straight.trace.items():
        assert column.shape[0] == 150, name
        assert torch.equal(resumed.trace[name], column), name
        assert torch.equal(stopped.trace[name], column[:97]), name


def test_resume_refuses_another_seed_and_foreign_files(tmp_path):
    x, y = data()
    engine = SVGD(minibatch_model, num_particles=4)
    path = tmp_path / "svgd.ckpt"
    engine.run(x, y, num_steps=3, seed=1, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match="seed=1"):
        engine.run(x, y, num_steps=6, seed=2, progress=False, checkpoint=path, resume=True)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ValueError, match="not a bayeskit checkpoint"):
        engine.run(x, y, num_steps=6, seed=1, progress=False, checkpoint=other, resume=True)


def test_callback_sees_every_step_and_can_stop_the_run():
    x, y = data()
    seen = []

    def stop_at_seven(step, state, info):
        seen.append(step)
        return step == 7

    post = SVGD(minibatch_model, num_particles=4).run(x, y, num_steps=50, seed=0, progress=False,
                                                      callback=stop_at_seven)
    assert seen == list(range(1, 8))
    assert post.meta["steps_completed"] == 7 and post.trace["phi_norm"].shape == (7,)


def test_non_finite_values_stop_the_run_naming_step_and_site():
    # log density x for x < 3 and NaN beyond: particles climb until they cross 3
    def climbing(x):
        return torch.where(x < 3, x, torch.full_like(x, float("nan"))).sum(-1)

    target = Target.from_log_prob(climbing, 1, name="height")
    with pytest.raises(NonFiniteError, match=r"step \d+ in site\(s\) 'height'") as caught:
        SVGD(target, num_particles=5, optimizer="sgd", lr=0.5).run(num_steps=100, seed=0, progress=False)
    error = caught.value
    assert error.sites == ["height"] and 1 < error.step < 100
    assert error.posterior.meta["steps_completed"] == error.step - 1
    assert torch.isfinite(error.posterior.samples["height"]).all()
    assert error.posterior.trace["phi_norm"].shape == (error.step - 1,)


def test_errors_from_inside_the_model_say_which_step():
    def refuses_large_values(x):
        if (x > 3).any():
            raise ValueError("x left the region the model allows")
        return x.sum(-1)

    target = Target.from_log_prob(refuses_large_values, 1)
    with pytest.raises(ValueError, match=r"SVGD step \d+: x left the region"):
        SVGD(target, num_particles=4, optimizer="sgd", lr=0.5).run(num_steps=50, seed=0, progress=False)


def test_progress_bar_is_off_under_ci(monkeypatch, capsys):
    from bayeskit.runner import progress_enabled

    monkeypatch.setenv("CI", "true")
    assert not progress_enabled(True)
    monkeypatch.delenv("CI")
    assert progress_enabled(True) and not progress_enabled(False)


def test_run_leaves_the_callers_rng_alone():
    x, y = data()
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    SVGD(minibatch_model, num_particles=4).run(x, y, num_steps=3, seed=0, progress=False)
    assert torch.equal(torch.rand(2), expected)


def test_non_finite_start_is_reported_at_step_one():
    target = Target.from_log_prob(lambda x: torch.full(x.shape[:-1], float("nan")), 2, name="w")
    with pytest.raises(NonFiniteError, match="step 1 in site") as caught:
        SVGD(target, num_particles=3).run(num_steps=10, seed=0, progress=False)
    assert caught.value.posterior.meta["steps_completed"] == 0 and caught.value.posterior.trace == {}


# ------------------------------------------------------------------ Fit: the loop behind the models' fit()
def least_squares_fit(x, y, seed_noise=False):
    weights = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)

    def loss(step):
        noise = 0.01 * torch.randn(()) if seed_noise else 0.0
        return ((x @ weights - y) ** 2).mean() + noise, {"norm": weights.detach().norm()}

    return Fit(loss, {"weights": weights}, lr=0.05, name="least squares"), weights


def test_fit_reaches_the_least_squares_solution_and_records_its_trace():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    noise = 0.1 * torch.randn(50, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + noise
    fit, _ = least_squares_fit(x, y)
    result = fit.run(num_steps=800, seed=0, progress=False)
    exact = torch.linalg.lstsq(x, y.unsqueeze(-1)).solution.squeeze(-1)
    torch.testing.assert_close(result.samples["weights"][0, 0], exact, atol=1e-4, rtol=0)
    assert result.trace["loss"].shape == (800,) and result.trace["norm"].shape == (800,)
    assert result.meta["engine"] == "Fit" and result.meta["settings"]["name"] == "least squares"
    assert result.meta["sample_kind"] == "point"


def test_between_steps_the_users_tensors_hold_the_newest_state():
    """What a callback sees on the module is the state it is handed, and after the run the returned values."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 3, generator=g, dtype=torch.float64), torch.randn(30, generator=g, dtype=torch.float64)
    fit, weights = least_squares_fit(x, y)
    seen = []
    result = fit.run(num_steps=5, seed=0, progress=False, callback=lambda step, state, info: seen.append(
        torch.equal(weights.detach(), state["parameters"]["weights"])))
    assert seen == [True] * 5 and torch.equal(weights.detach(), result.samples["weights"][0, 0])


def test_fit_resumes_from_a_checkpoint_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 2, dtype=torch.float64, generator=g), torch.randn(20, dtype=torch.float64, generator=g)
    whole = least_squares_fit(x, y, seed_noise=True)[0].run(num_steps=40, seed=3, progress=False)
    path = tmp_path / "fit.pt"
    first, weights = least_squares_fit(x, y, seed_noise=True)
    first.run(num_steps=40, seed=3, progress=False, checkpoint=path, checkpoint_every=10,
              callback=lambda step, state, info: step == 25)
    second, _ = least_squares_fit(x, y, seed_noise=True)
    resumed = second.run(num_steps=40, seed=3, progress=False, checkpoint=path, resume=True)
    torch.testing.assert_close(resumed.samples["weights"], whole.samples["weights"], rtol=0, atol=0)
    torch.testing.assert_close(resumed.trace["loss"], whole.trace["loss"], rtol=0, atol=0)


def test_fit_stops_on_a_non_finite_loss_naming_the_parameter_and_keeps_the_last_good_values():
    scale = torch.tensor(1.0, requires_grad=True)
    # from step 6 on the loss is log(0): -inf, with an infinite gradient in scale
    fit = Fit(lambda step: (scale - 3) ** 2 if step < 5 else torch.log(scale - scale.detach()), {"scale": scale},
              lr=0.1)
    with pytest.raises(NonFiniteError, match="step 6 in site\\(s\\) 'scale'") as error:
        fit.run(num_steps=20, seed=0, progress=False)
    kept = error.value.posterior.samples["scale"]
    assert error.value.sites == ["scale"] and error.value.posterior.meta["steps_completed"] == 5
    assert float(kept) == pytest.approx(float(scale.detach()), abs=0) and 1.0 < float(kept) < 3.0


def test_fit_refuses_what_it_cannot_optimise():
    with pytest.raises(ValueError, match="requires_grad"):
        Fit(lambda step: torch.zeros(()), {"a": torch.zeros(2)})
    with pytest.raises(TypeError, match="positional argument"):  # the loss closes over its data
        Fit(lambda step: torch.zeros(()), {"a": torch.zeros(2, requires_grad=True)}).run(torch.zeros(1))


def test_fit_takes_torch_adams_steps_bit_for_bit_with_groups_and_a_schedule():
    """Fit's pure Adam against torch.optim.Adam (ground truth we did not write) run by hand on the same loss:
    two parameter groups with their own rates, one of them dropping at step 20 (what the GP's fit does)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randn(40, generator=g, dtype=torch.float64)

    def problem():
        weights = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
        return weights, bias, lambda step: ((x @ weights + bias - y) ** 2).mean()

    weights, bias, loss = problem()
    optimizer = {"weights": Adam(lr=lambda t: 0.05 if t <= 20 else 0.005), "bias": Adam(lr=0.02)}
    fitted = Fit(loss, {"weights": weights, "bias": bias}, optimizer=optimizer).run(num_steps=40, seed=0,
                                                                                    progress=False)
    weights_ref, bias_ref, loss_ref = problem()
    reference = torch.optim.Adam([{"params": [weights_ref], "lr": 0.05}, {"params": [bias_ref], "lr": 0.02}])
    for step in range(40):
        reference.param_groups[0]["lr"] = 0.05 if step < 20 else 0.005
        reference.zero_grad()
        loss_ref(step).backward()
        reference.step()
    assert torch.equal(fitted.samples["weights"][0, 0], weights_ref.detach())
    assert torch.equal(fitted.samples["bias"][0, 0], bias_ref.detach())
    assert torch.equal(weights.detach(), weights_ref.detach())  # the user's tensors hold the fitted values
    assert fitted.meta["settings"]["optimizer"] == "Adam"


def test_fit_steps_are_pure_even_when_the_loss_changes_parameters_and_carried_objects_in_place():
    """A loss that re-initialises a parameter in place every third step and updates a carried running sum:
    each step leaves its input state as it was and replays to the same state and loss."""
    from conftest import assert_steps_are_pure

    class RunningSum:
        def __init__(self):
            self.total = torch.zeros(2, dtype=torch.float64)

        def state_dict(self):
            return {"total": self.total}

        def load_state_dict(self, saved):
            self.total = saved["total"]

    centre, spread = torch.ones(2, dtype=torch.float64, requires_grad=True), torch.zeros((), requires_grad=True)
    running = RunningSum()

    def loss(step):
        if step % 3 == 2:
            with torch.no_grad():
                centre.mul_(0.5)
        running.total += centre.detach()  # in place, on the carried object's own tensor
        return ((centre - running.total) ** 2).sum() + spread.double() ** 2 + 0.1 * torch.randn((), dtype=torch.float64)

    fit = Fit(loss, {"centre": centre, "spread": spread}, lr=0.1, carry={"running": running})
    state = assert_steps_are_pure(fit, Parameters(fit.parameters, "toy"), 6)
    assert state["step"] == 6 and not torch.equal(state["carry"]["running"]["total"], torch.zeros(2))


def test_fit_refuses_torch_optim_and_incomplete_optimizer_dicts():
    weights = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match="in place"):
        Fit(lambda step: weights.sum(), {"w": weights}, optimizer=torch.optim.Adam)
    with pytest.raises(ValueError, match=r"missing \['w'\]"):
        Fit(lambda step: weights.sum(), {"w": weights}, optimizer={"v": Adam(lr=0.1)})


def test_the_readme_fit():
    """The README's Fit example, run as printed: the least-squares line against numpy's lstsq."""
    import re

    from conftest import REPO

    text = (REPO / "README.md").read_text()
    section = text[text.index("bayeskit.runner.Fit(loss, parameters)"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        exec(code, namespace)  # the README's own example
    x, y, line, result = namespace["x"], namespace["y"], namespace["line"], namespace["result"]
    design = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    exact = np.linalg.lstsq(design.numpy(), y.double().numpy(), rcond=None)[0]
    fitted = torch.cat([result.samples["weight"].reshape(3), result.samples["bias"].reshape(1)]).double()
    np.testing.assert_allclose(fitted.numpy(), exact, atol=1e-3)
    assert torch.equal(line.weight.detach(), result.samples["weight"][0, 0])


def test_the_readme_algorithm(float64, tmp_path):
    """The README's random-walk Metropolis, run as printed, on Gamma(3, 2) through its log transform: the one
    loop's contract for an algorithm we did not ship (the Gamma's mean and sd, a recorded seed, exact resume)."""
    import re

    from conftest import REPO
    from torch.distributions import constraints

    text = (REPO / "README.md").read_text()
    section = text[text.index("## The one loop"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    definitions, _ = code.rsplit("\npost = ", 1)
    namespace = {}
    exec(definitions, namespace)  # the README's own example
    RandomWalk, run_loop = namespace["RandomWalk"], namespace["run_loop"]
    gamma = torch.distributions.Gamma(torch.tensor([3.0, 2.0]), torch.tensor([2.0, 2.0]))
    target = Target.from_log_prob(lambda x: gamma.log_prob(x).sum(-1), 2, support=constraints.positive)
    post = run_loop(RandomWalk(num_chains=8, step_size=1.0), target, num_steps=2000, seed=0, progress=False)
    draws = post.samples["theta"][:, 500:].reshape(-1, 2)
    assert post.meta["engine"] == "RandomWalk" and post.meta["seed"] == 0
    torch.testing.assert_close(draws.mean(0), gamma.mean, atol=0.1 * float(gamma.stddev.max()), rtol=0)
    torch.testing.assert_close(draws.std(0), gamma.stddev, rtol=0.1, atol=0)
    # checkpoint at step 300 and resume: the same draws as the uninterrupted run
    path = tmp_path / "rw.ckpt"
    whole = run_loop(RandomWalk(), target, num_steps=500, seed=1, progress=False)
    run_loop(RandomWalk(), target, num_steps=500, seed=1, progress=False, checkpoint=path, checkpoint_every=100,
             callback=lambda step, state, info: step == 300)
    resumed = run_loop(RandomWalk(), target, num_steps=500, seed=1, progress=False, checkpoint=path, resume=True)
    assert torch.equal(whole.samples["theta"], resumed.samples["theta"])
