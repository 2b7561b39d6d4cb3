"""Fusion's cells of the run contract (DESIGN.md, issue 22): what tests/test_run_contract.py checks of every engine
on the one loop, for ``Fusion.run`` (sample the shards, then fuse) and ``Fusion.fuse`` (ready sub-posteriors).

A drawn seed is recorded and reproduces the run, the same seed gives bit-identical draws, a checkpoint at any
step resumed equals the uninterrupted run (and the shards are not sampled again), a callback stops the run,
``meta`` has the one schema with the health report and Fusion's own keys, and a step leaves its input state
unchanged. The sub-posteriors are exact Gaussians, so every case runs in well under a second; accuracy is
test_fusion.py's business.
"""

from __future__ import annotations

import copy
import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import all_draws, nested_equal

from bayeskit.inference.fusion import Fusion, GaussianDensity, ShardDensity, SubPosterior, core
from bayeskit.inference.fusion.engine import FusionProblem
from bayeskit.runner import NonFiniteError

pytestmark = pytest.mark.usefixtures("float64", "one_thread")

NUM_PARTICLES = 64
META_KEYS = {"engine", "settings", "seed", "num_steps", "steps_completed", "wall_time_s", "device", "dtype",
             "target", "versions", "health"}
FUSION_KEYS = {"nodes", "estimator", "approximate", "approximation", "fusion_wall_time_s", "fusion_seconds",
               "num_subposteriors", "complete"}


# ------------------------------------------------------------------ a model, an exact sampler, ready sub-posteriors
def normal_mean(x):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(()), 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(theta, 1.0), obs=x)


def exact_sampler(shard, num_samples, seed):
    """Exact draws of ``normal_mean``'s sub-posterior: N(0, 1)^(1/C) times the shard's likelihood is Gaussian."""
    data = shard.args[0]
    precision = shard.prior_exponent + len(data)
    noise = torch.randn(num_samples, 1, generator=torch.Generator().manual_seed(seed))
    return data.sum() / precision + noise / precision ** 0.5


def refusing_sampler(shard, num_samples, seed):
    raise AssertionError("a resumed run sampled the shards again")


def rows():
    return 0.7 + torch.randn(40, generator=torch.Generator().manual_seed(0))


def gaussian_subposteriors(count=4, dim=2):
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        mean = 0.6 * torch.randn(dim, generator=generator)
        root = 0.4 * torch.randn(dim, dim, generator=generator) + torch.eye(dim)
        covariance = root @ root.T
        draws = mean + torch.randn(NUM_PARTICLES, dim, generator=generator) @ torch.linalg.cholesky(covariance).T
        out.append(SubPosterior(draws, GaussianDensity(mean, covariance)))
    return out


#: name -> (engine settings, sub-posteriors for fuse or None for run, the steps the run takes).
CASES = {
    "run_gbf_balanced": (dict(model=normal_mean, num_shards=4, method="gbf", tree="balanced"), None, 3),
    "run_consensus": (dict(model=normal_mean, num_shards=3, method="consensus"), None, 2),
    "fuse_gbf_balanced": (dict(method="gbf", tree="balanced"), 4, 2),
    "fuse_dc_mcf_progressive": (dict(method="dc_mcf", tree="progressive"), 3, 2),
    "fuse_mcf_fork_and_join": (dict(method="mcf", tree="fork_and_join"), 3, 1),
    "fuse_weierstrass": (dict(method="weierstrass"), 4, 1),
}
MULTI_STEP = [name for name, (_, _, steps) in CASES.items() if steps > 1]


def engine_of(name, **changes):
    settings, _, _ = CASES[name]
    sampler = {"sampler": exact_sampler} if "model" in settings else {}
    return Fusion(**{"num_particles": NUM_PARTICLES, **sampler, **settings, **changes})


def run(name, engine=None, **options):
    """The case's run: ``Fusion(...).run(x)`` or ``Fusion(...).fuse(sub-posteriors)``."""
    _, count, _ = CASES[name]
    engine = engine or engine_of(name)
    if count is None:
        return engine.run(rows(), progress=False, **options)
    return engine.fuse(gaussian_subposteriors(count), progress=False, **options)


def problem_of(name):
    engine = engine_of(name)
    _, count, _ = CASES[name]
    if count is None:
        return engine, FusionProblem.from_shards(engine.shards(rows(), seed=0), engine.tree)
    return engine, FusionProblem.from_subposteriors(gaussian_subposteriors(count), engine.tree)


def assert_same_run(first, second):
    """Bit-identical draws, weights and per-node trace, and the same node summaries but for their timings."""
    for mine, theirs in ((all_draws(first), all_draws(second)), (first.trace, second.trace)):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert torch.equal(mine[key], theirs[key]), key
    assert untimed(first.meta["nodes"]) == untimed(second.meta["nodes"])


def untimed(nodes):
    return [{key: value for key, value in node.items() if key != "seconds"} for node in nodes]


def stop_at(step_to_stop):
    return lambda step, state, info: step == step_to_stop


# ------------------------------------------------------------------ seeds
@pytest.mark.parametrize("name", list(CASES))
def test_a_drawn_seed_is_recorded_and_reproduces_the_run(name):
    post = run(name, seed=None)
    assert isinstance(post.meta["seed"], int)
    assert_same_run(post, run(name, seed=post.meta["seed"]))


@pytest.mark.parametrize("name", ["run_gbf_balanced", "fuse_gbf_balanced"])
def test_the_same_seed_gives_the_same_draws_and_another_seed_others(name):
    first, again, other = run(name, seed=4), run(name, seed=4), run(name, seed=5)
    assert_same_run(first, again)
    assert not torch.equal(first.samples["theta"], other.samples["theta"])


def test_sample_subposteriors_records_a_drawn_seed_that_gives_the_same_split_and_draws():
    engine = engine_of("run_gbf_balanced")
    subposteriors = engine.sample_subposteriors(rows())
    seed = subposteriors[0].info["seed"]
    assert isinstance(seed, int) and all(sub.info["seed"] == seed for sub in subposteriors)
    again = engine.sample_subposteriors(rows(), seed=seed)
    assert all(torch.equal(first.samples, second.samples) for first, second in zip(subposteriors, again))
    for shard, sub in zip(engine.shards(rows(), seed=seed), subposteriors):
        assert sub.info["num_data"] == shard.num_data and sub.info["shard"] == shard.index


def test_a_run_leaves_the_callers_random_state_alone():
    before = torch.get_rng_state()
    run("run_gbf_balanced", seed=0)
    assert torch.equal(before, torch.get_rng_state())


# ------------------------------------------------------------------ checkpoints and resume
def _stops():
    for name in MULTI_STEP:
        for step in range(1, CASES[name][2]):
            yield pytest.param(name, step, id=f"{name}-stop{step}")


@pytest.mark.parametrize("name,stop", list(_stops()))
def test_resuming_a_checkpoint_equals_the_uninterrupted_run(name, stop, tmp_path):
    path = tmp_path / f"{name}.ckpt"
    whole = run(name, seed=3)
    partial = run(name, seed=3, checkpoint=path, callback=stop_at(stop))
    assert partial.meta["steps_completed"] == stop and path.exists()
    resumed = run(name, seed=3, checkpoint=path, resume=True)
    assert resumed.meta["steps_completed"] == resumed.meta["num_steps"] == CASES[name][2]
    assert_same_run(whole, resumed)


def test_a_run_resumed_after_the_sampling_step_does_not_sample_again(tmp_path):
    path = tmp_path / "sampled.ckpt"
    whole = run("run_gbf_balanced", seed=2)
    run("run_gbf_balanced", seed=2, checkpoint=path, callback=stop_at(1))
    resumed = run("run_gbf_balanced", engine=engine_of("run_gbf_balanced", sampler=refusing_sampler), seed=2,
                  checkpoint=path, resume=True)
    assert_same_run(whole, resumed)
    assert resumed.meta["subposterior_seconds"] == pytest.approx(whole.meta["subposterior_seconds"], abs=10)


def test_a_checkpoint_of_other_sub_posteriors_is_refused(tmp_path):
    path = tmp_path / "four.ckpt"
    engine = Fusion(method="gbf", tree="balanced", num_particles=NUM_PARTICLES)
    engine.fuse(gaussian_subposteriors(4), seed=0, progress=False, checkpoint=path, callback=stop_at(1))
    with pytest.raises(ValueError, match="other sub-posteriors"):
        engine.fuse(gaussian_subposteriors(2), seed=0, progress=False, checkpoint=path, resume=True)


# ------------------------------------------------------------------ callbacks and meta
@pytest.mark.parametrize("name", MULTI_STEP)
def test_a_callback_stops_the_run_and_meta_has_one_schema(name):
    seen = []

    def callback(step, state, info):
        seen.append((step, {key: value.dim() for key, value in info.items()}))
        return step == 1

    post = run(name, seed=0, callback=callback)
    assert seen == [(1, {"finite": 0, "num_sets": 0, "min_ess": 0})]
    assert post.meta["steps_completed"] == 1 and post.meta["num_steps"] == CASES[name][2]
    assert META_KEYS | FUSION_KEYS <= set(post.meta), (META_KEYS | FUSION_KEYS) - set(post.meta)
    assert post.meta["engine"] == "Fusion" and isinstance(post.meta["health"], list)
    # stopped before the root: the particle sets reached, one chain each
    assert post.meta["complete"] is False and len(post.meta["frontier"]) == post.num_chains > 1


def test_a_stopped_run_brings_sets_of_other_sizes_to_num_particles_draws():
    subposteriors = gaussian_subposteriors(3)
    longer = torch.cat([subposteriors[2].samples, subposteriors[2].samples + 0.1])  # 2 N draws
    subposteriors[2] = SubPosterior(longer, subposteriors[2].density)
    post = Fusion(method="gbf", tree="progressive", num_particles=NUM_PARTICLES).fuse(
        subposteriors, seed=0, progress=False, callback=stop_at(1))
    assert post.meta["frontier"] == ["shard 2", "0"] and post.samples["theta"].shape == (2, NUM_PARTICLES, 2)
    assert post.log_weights is None  # resampled to equal weights, as the next node would


@pytest.mark.parametrize("name", list(CASES))
def test_a_complete_run_has_the_one_meta_schema_and_fusions_keys(name):
    post = run(name, seed=0)
    assert META_KEYS | FUSION_KEYS <= set(post.meta), (META_KEYS | FUSION_KEYS) - set(post.meta)
    assert post.meta["engine"] == "Fusion" and post.meta["seed"] == 0
    assert post.meta["num_steps"] == post.meta["steps_completed"] == CASES[name][2]
    assert post.meta["complete"] is True and "frontier" not in post.meta and post.num_chains == 1
    assert post.meta["dtype"] == "float64" and post.meta["device"] == "cpu"
    assert post.meta["num_subposteriors"] == (CASES[name][1] or CASES[name][0]["num_shards"])
    if CASES[name][1] is None:
        assert len(post.meta["subposterior_seconds"]) == CASES[name][0]["num_shards"]
        assert post.meta["subposterior_wall_time_s"] >= 0
    json.dumps(post.meta)  # what Posterior.save writes


def test_the_trace_has_one_row_per_mesh_step_of_every_node():
    post = run("fuse_gbf_balanced", seed=0)
    nodes = post.meta["nodes"]
    assert [node["node"] for node in nodes] == ["0", "1", "root"]
    assert {"time", "ess", "cess", "resampled", "node", "height"} == set(post.trace)
    assert len(post.trace["time"]) == sum(node["mesh_steps"] + 1 for node in nodes)
    assert post.trace["height"].tolist() == [node["height"] for node in nodes
                                             for _ in range(node["mesh_steps"] + 1)]


def test_one_sub_posterior_is_its_own_fusion():
    subposterior = gaussian_subposteriors(1)[0]
    post = Fusion(num_particles=NUM_PARTICLES).fuse([subposterior], seed=0, progress=False)
    assert post.meta["num_steps"] == 1 and post.meta["nodes"] == []
    assert torch.equal(post.samples["theta"][0], subposterior.samples)


# ------------------------------------------------------------------ pure steps
@pytest.mark.parametrize("name", list(CASES))
def test_a_step_leaves_its_input_state_unchanged(name):
    engine, problem = problem_of(name)
    state = engine.init(problem, torch.Generator().manual_seed(0))
    for step in range(CASES[name][2]):
        before = copy.deepcopy(engine.state_dict(state))
        new, info = engine.step(state, problem, torch.default_generator)
        assert nested_equal(before, engine.state_dict(state)), f"step {step + 1} changed the state it was given"
        assert bool(info["finite"]) and new["steps"] == step + 1
        state = new


# ------------------------------------------------------------------ non-finite results
def test_non_finite_weights_stop_the_run_with_the_last_finite_state(monkeypatch):
    fuse_gbf, calls = core.fuse_gbf, []

    def spoiled_at_the_root(children, **options):
        result = fuse_gbf(children, **options)
        calls.append(len(calls))
        if len(calls) == 3:  # the balanced tree of four: nodes 0 and 1, then the root
            fused = result.particles
            nan = torch.full_like(fused.log_weights, float("nan"))
            result = core.NodeResult(core.ParticleSet(fused.particles, fused.density, nan), result.trace,
                                     result.summary)
        return result

    monkeypatch.setattr(core, "fuse_gbf", spoiled_at_the_root)
    with pytest.raises(NonFiniteError, match="step 2 in site\\(s\\) 'log_weights'") as caught:
        run("fuse_gbf_balanced", seed=0)
    assert caught.value.step == 2 and caught.value.sites == ["log_weights"]
    assert caught.value.posterior.meta["frontier"] == ["0", "1"]


class _NoWeightLeft(ShardDensity):
    """A density whose phi is +inf everywhere: every path weight is zero."""

    def __init__(self, mean):
        self.mean, self.num_data = mean, 1

    def log_prob(self, z):
        return -0.5 * (z - self.mean).square().sum(-1)

    def phi(self, z, scale):
        return torch.full(z.shape[:1], float("inf"), dtype=z.dtype)


def test_a_node_left_with_no_weight_is_named():
    subposteriors = [SubPosterior(sub.samples, _NoWeightLeft(sub.samples.mean(0))) for sub in gaussian_subposteriors(2)]
    with pytest.raises(FloatingPointError, match="tree node root \\(height 1\\): every fused particle"):
        Fusion(method="dc_mcf", num_particles=NUM_PARTICLES).fuse(subposteriors, seed=0, progress=False)


# ------------------------------------------------------------------ on a GPU
@pytest.mark.gpu
def test_fuse_runs_on_cuda_and_resumes_exactly(tmp_path):
    subposteriors = [SubPosterior(sub.samples.cuda(), GaussianDensity(sub.density.mean.cuda(),
                                                                      precision=sub.density.precision.cuda()))
                     for sub in gaussian_subposteriors(4)]
    engine, path = Fusion(method="gbf", tree="balanced", num_particles=NUM_PARTICLES), tmp_path / "cuda.ckpt"
    whole = engine.fuse(subposteriors, seed=1, progress=False)
    engine.fuse(subposteriors, seed=1, progress=False, checkpoint=path, callback=stop_at(1))
    resumed = engine.fuse(subposteriors, seed=1, progress=False, checkpoint=path, resume=True)
    assert whole.meta["device"].startswith("cuda") and whole.samples["theta"].is_cuda
    assert_same_run(whole, resumed)
