r"""DKLGP (bayeskit's sparse inverse-Cholesky GP) against GPyTorch's SVGP and VNNGP on the authors' simulation.

Data (Cao et al. 2023, ``experiments/setups.yaml``): ``X ~ U[0, 1]^5``, ``f ~ GP(0, k)`` with ``k`` a Matern 3/2
ARD kernel (lengthscales 0.25, 0.5, 0.75, 1.0, 1.25, outputscale 1), drawn exactly (float64 Cholesky of the
10,000 x 10,000 kernel matrix plus 1e-4 I, as the authors do); ``n = 10,000`` split 8,000 / 2,000. Two
likelihoods: Gaussian, ``y = f + N(0, 0.01)``, and Bernoulli-logit, ``y ~ Bernoulli(sigmoid(f))``.

Methods, all with a Matern 3/2 ARD kernel learnt from the same start (lengthscale 0.5, outputscale 1,
Gaussian noise 0.1), minibatches of 128, Adam at lr 0.01 for the hyperparameters:

- ``dklgp``: ``SparseInverseCholeskyGP(variational="sic")``, 40 epochs, re-ordered with the learnt lengthscales
  after 5 (the authors' scheme), Laplace start;
- ``mean_field``: the same model with a diagonal ``V`` (the paper's DKL-D);
- ``svgp``: GPyTorch ``VariationalStrategy`` with a ``NaturalVariationalDistribution``, ``m`` inducing
  points (random training points, learnt), NGD on q (``--ngd-lr``, default 0.1, GPyTorch's documented step; the
  authors used 0.01) plus Adam on the rest, ``--svgp-epochs`` (default 100: its epochs are cheap);
- ``vnngp``: GPyTorch ``NNVariationalStrategy`` (every training point inducing, mean-field q, ``k = m``
  nearest previous neighbours), Adam at lr 0.01 on everything, 40 epochs of GPyTorch's own minibatching
  (``model(x=None)``; its epoch is the first ``k`` points as one batch, then the rest in batches of 128).

``m`` is DKLGP's mean set size ``nnz(U) / n`` (rounded; the default ``rho = 1.5``, one of the authors' values,
gives about 8.5 in 5-D, ``rho = 2`` about 26), so every method conditions on about as many points. For the
Bernoulli runs GPyTorch gets a logit likelihood, the link the data are simulated with (its own
``BernoulliLikelihood`` is probit: ``--gpytorch-bernoulli probit``);
GPyTorch's ELBO takes the expected log-likelihood by its default Gauss-Hermite quadrature.

Metrics on the 2,000 test points: RMSE of the predictive mean of ``f`` against the true ``f``; the full
Gaussian NLL of the true ``f`` under each method's predictive ``N(mean, var)`` of ``f`` (with the 0.5 log 2 pi
term that ``GaussianNLLLoss`` leaves out: the paper's metric on simulations); the NLL of the test ``y`` under the
predictive of ``y`` (Gaussian: ``N(mean, var + noise)``; Bernoulli: ``p = E[sigmoid f]`` by 32-point
Gauss-Hermite, the same code for every method); seconds per epoch = training wall time / epochs (DKLGP's
includes its ordering, Laplace start and re-ordering); peak MiB = the peak memory of the whole call, training and
test predictions (``measure.PeakMemory``: the process's RSS above its value at the call's start). No method
compiles. One thread (``--threads``).

Run: ``python benchmarks/gp_sic_vs_gpytorch.py`` (about 10 minutes on one thread of the 2-core dev machine;
``wall_time_s`` in the JSON says how long it took; ``--rho 2`` costs DKLGP far more per epoch, see the README),
``--quick`` (n = 1,000, 3 epochs, under a minute), ``--methods svgp,vnngp`` for a subset, ``--out DIR``.
Writes ``benchmarks/results/gp_sic_vs_gpytorch{,_quick}{,_rho2}.{json,md}`` (the suffix names a ``--rho``
other than 1.5); the JSON records the settings, the machine load and the versions of torch, gpytorch and
bayeskit (the peers), and the verdicts on the two targets: DKLGP's test NLL(f) below every other method's, and
its seconds per epoch within 2x of VNNGP's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))  # measure.py sits next to the scripts (not a package)
from measure import PeakMemory  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LENGTHSCALES = (0.25, 0.5, 0.75, 1.0, 1.25)
METHODS = ("dklgp", "mean_field", "svgp", "vnngp")


def matern32(a, b, lengthscale):
    r = torch.cdist(a / lengthscale, b / lengthscale)
    return (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r)


def simulate(n, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    lengthscale = torch.tensor(LENGTHSCALES, dtype=torch.float64)
    covariance = matern32(x, x, lengthscale)
    covariance.diagonal().add_(1e-4)
    f = torch.linalg.cholesky(covariance) @ torch.randn(n, generator=generator, dtype=torch.float64)
    del covariance
    y = {"gaussian": f + 0.1 * torch.randn(n, generator=generator, dtype=torch.float64),
         "bernoulli": torch.bernoulli(torch.sigmoid(f), generator=generator)}
    return x, f, y


def hermite_probability(mean, var, points=32):
    nodes, weights = np.polynomial.hermite.hermgauss(points)
    nodes, weights = torch.as_tensor(nodes), torch.as_tensor(weights / math.sqrt(math.pi))
    f = mean.double().unsqueeze(-1) + (2 * var.double()).sqrt().unsqueeze(-1) * nodes
    return (torch.sigmoid(f) * weights).sum(-1)


def metrics(mean, var, f_test, y_test, likelihood, noise):
    mean, var = mean.double(), var.double().clamp_min(1e-12)
    nll_f = float(-torch.distributions.Normal(mean, var.sqrt()).log_prob(f_test).mean())
    if likelihood == "gaussian":
        nll_y = float(-torch.distributions.Normal(mean, (var + noise).sqrt()).log_prob(y_test).mean())
    else:
        p = hermite_probability(mean, var).clamp(1e-12, 1 - 1e-12)
        nll_y = float(-(y_test * p.log() + (1 - y_test) * (1 - p).log()).mean())
    return {"rmse_f": float((mean - f_test).square().mean().sqrt()), "nll_f": nll_f, "nll_y": nll_y}


# ----------------------------------------------------------------------- bayeskit
def run_bayeskit(variational, data, likelihood, rho, epochs, reorder_after, seed):
    from bayeskit.models import SparseInverseCholeskyGP

    x, y, x_test = data
    began = time.perf_counter()
    gp = SparseInverseCholeskyGP(x.float(), y.float(), likelihood=likelihood, rho=rho, variational=variational,
                                 lengthscale=0.5, outputscale=1.0, noise=0.1)
    gp.fit(num_epochs=epochs, batch_size=128, lr=0.01, reorder_after=reorder_after, seed=seed, progress=False)
    seconds = time.perf_counter() - began
    latent = gp.predict(x_test.float())
    noise = float(gp.likelihood.noise.detach()) if likelihood == "gaussian" else None
    return latent.mean, latent.variance, seconds, {"m": gp.num_neighbours, "noise": noise,
                                                   "outputscale": float(gp.kernel.outputscale.detach()),
                                                   "lengthscale": gp.kernel.lengthscale.detach().tolist()}


# ----------------------------------------------------------------------- GPyTorch
def _gpytorch_likelihood(likelihood, link="logit"):
    import gpytorch

    if likelihood == "gaussian":
        lik = gpytorch.likelihoods.GaussianLikelihood()
        lik.noise = 0.1
        return lik
    if link == "probit":
        return gpytorch.likelihoods.BernoulliLikelihood()

    class LogitLikelihood(gpytorch.likelihoods._OneDimensionalLikelihood):
        def forward(self, function_samples, **kwargs):
            return torch.distributions.Bernoulli(logits=function_samples)

    return LogitLikelihood()


def _kernel():
    import gpytorch

    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=1.5, ard_num_dims=5))
    kernel.base_kernel.lengthscale = 0.5
    kernel.outputscale = 1.0
    return kernel


def run_svgp(data, likelihood, m, epochs, seed, ngd_lr=0.1, link="logit"):
    import gpytorch

    x, y, x_test = (t.float() for t in data)
    torch.manual_seed(seed)

    class SVGP(gpytorch.models.ApproximateGP):
        def __init__(self, inducing):
            distribution = gpytorch.variational.NaturalVariationalDistribution(len(inducing))
            strategy = gpytorch.variational.VariationalStrategy(self, inducing, distribution,
                                                                learn_inducing_locations=True)
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = _kernel()

        def forward(self, inputs):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(inputs), self.covar_module(inputs))

    began = time.perf_counter()
    model = SVGP(x[torch.randperm(len(x))[:m]].clone())
    lik = _gpytorch_likelihood(likelihood, link)
    elbo = gpytorch.mlls.VariationalELBO(lik, model, num_data=len(x))
    natural = gpytorch.optim.NGD(model.variational_parameters(), num_data=len(x), lr=ngd_lr)
    adam = torch.optim.Adam([{"params": model.hyperparameters()}, {"params": lik.parameters()}], lr=0.01)
    model.train()
    lik.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(128):
            natural.zero_grad()
            adam.zero_grad()
            loss = -elbo(model(x[batch]), y[batch])
            loss.backward()
            natural.step()
            adam.step()
    seconds = time.perf_counter() - began
    return (*_gpytorch_predict(model, lik, x_test), seconds, _gpytorch_settings(model, lik, likelihood, m))


def run_vnngp(data, likelihood, m, epochs, seed, link="logit"):
    import gpytorch

    x, y, x_test = (t.float() for t in data)
    torch.manual_seed(seed)

    class VNNGP(gpytorch.models.ApproximateGP):
        def __init__(self, inducing, k):
            distribution = gpytorch.variational.MeanFieldVariationalDistribution(len(inducing))
            strategy = gpytorch.variational.NNVariationalStrategy(self, inducing, distribution, k=k,
                                                                  training_batch_size=128)
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = _kernel()

        def forward(self, inputs):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(inputs), self.covar_module(inputs))

        def __call__(self, inputs, prior=False, **kwargs):
            return self.variational_strategy(x=inputs, prior=prior, **kwargs)

    began = time.perf_counter()
    model = VNNGP(x.clone(), k=m)
    lik = _gpytorch_likelihood(likelihood, link)
    elbo = gpytorch.mlls.VariationalELBO(lik, model, num_data=len(x))
    adam = torch.optim.Adam([{"params": model.parameters()}, {"params": lik.parameters()}], lr=0.01)
    model.train()
    lik.train()
    # GPyTorch's epoch, as in its VNNGP example: the first k points as one batch, then the other M - k in a fresh
    # random order in batches of 128 (1 + ceil((M - k) / 128) steps)
    steps = model.variational_strategy._total_training_batches
    for _ in range(epochs):
        for _ in range(steps):
            adam.zero_grad()
            output = model(None)  # the strategy draws its own minibatch of training indices
            batch = model.variational_strategy.current_training_indices
            loss = -elbo(output, y[batch])
            loss.backward()
            adam.step()
    seconds = time.perf_counter() - began
    return (*_gpytorch_predict(model, lik, x_test), seconds, _gpytorch_settings(model, lik, likelihood, m))


def _gpytorch_predict(model, lik, x_test):
    import gpytorch

    model.eval()
    lik.eval()
    means, variances = [], []
    with torch.no_grad(), gpytorch.settings.fast_pred_var():
        for part in x_test.split(500):
            latent = model(part)
            means.append(latent.mean)
            variances.append(latent.variance)
    return torch.cat(means), torch.cat(variances)


def _gpytorch_settings(model, lik, likelihood, m):
    return {"m": m, "noise": float(lik.noise.detach()) if likelihood == "gaussian" else None,
            "outputscale": float(model.covar_module.outputscale.detach()),
            "lengthscale": model.covar_module.base_kernel.lengthscale.detach().flatten().tolist()}


# ----------------------------------------------------------------------- main
def versions():
    import gpytorch

    import bayeskit

    return {"bayeskit": bayeskit.__version__, "torch": torch.__version__, "gpytorch": gpytorch.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_average": os.getloadavg()}


def run(likelihood, x, f, y, split, args, log):
    train, test = slice(0, split), slice(split, None)
    data = (x[train], y[likelihood][train], x[test])
    rows = []
    m = None
    for method in args.methods:
        with PeakMemory() as memory:
            if method in ("dklgp", "mean_field"):
                variational = "sic" if method == "dklgp" else "mean_field"
                mean, var, seconds, settings = run_bayeskit(variational, data, likelihood, args.rho, args.epochs,
                                                            args.reorder_after, args.seed)
                if method == "dklgp":
                    m = round(settings["m"])
                epochs = args.epochs
            elif method == "svgp":
                epochs = args.svgp_epochs
                mean, var, seconds, settings = run_svgp(data, likelihood, m or args.m, epochs, args.seed,
                                                        args.ngd_lr, args.gpytorch_bernoulli)
            else:
                epochs = args.epochs
                mean, var, seconds, settings = run_vnngp(data, likelihood, m or args.m, epochs, args.seed,
                                                         args.gpytorch_bernoulli)
        noise = settings["noise"] or 0.0
        row = {"likelihood": likelihood, "method": method, "epochs": epochs, "seconds": seconds,
               "seconds_per_epoch": seconds / epochs, "peak_mib": memory.peak_mib, **settings,
               **metrics(mean.detach(), var.detach(), f[test], y[likelihood][test], likelihood, noise)}
        rows.append(row)
        log(f"{likelihood} {method}: m {row['m']:.1f}, {row['seconds_per_epoch']:.2f} s/epoch, "
            f"peak {row['peak_mib']:.1f} MiB, RMSE(f) {row['rmse_f']:.4f}, NLL(f) {row['nll_f']:.4f}, "
            f"NLL(y) {row['nll_y']:.4f}")
    return rows


def verdicts(rows):
    out = {}
    for likelihood in sorted({r["likelihood"] for r in rows}):
        by = {r["method"]: r for r in rows if r["likelihood"] == likelihood}
        if "dklgp" in by:
            others = [r for name, r in by.items() if name != "dklgp"]
            out[likelihood] = {"dklgp_nll_f_below_every_other": all(by["dklgp"]["nll_f"] < r["nll_f"] for r in others)}
            if "vnngp" in by:
                ratio = by["dklgp"]["seconds_per_epoch"] / by["vnngp"]["seconds_per_epoch"]
                out[likelihood].update({"seconds_per_epoch_ratio_to_vnngp": ratio,
                                        "within_2x_of_vnngp": ratio <= 2.0})
    return out


def table(rows):
    lines = []
    for likelihood in sorted({r["likelihood"] for r in rows}):
        subset = [r for r in rows if r["likelihood"] == likelihood]
        vnngp = next((r for r in subset if r["method"] == "vnngp"), None)
        lines += [f"\n**{likelihood}**\n",
                  "| method | m | epochs | s/epoch | peak MiB | vs VNNGP | RMSE(f) | NLL(f) | NLL(y) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in subset:
            ratio = f"{r['seconds_per_epoch'] / vnngp['seconds_per_epoch']:.2f}x" if vnngp else ""
            lines.append(f"| {r['method']} | {r['m']:.1f} | {r['epochs']} | {r['seconds_per_epoch']:.2f} | "
                         f"{r['peak_mib']:.1f} | {ratio} | {r['rmse_f']:.4f} | {r['nll_f']:.4f} | {r['nll_y']:.4f} |")
    return "\n".join(lines)


def render(report):
    """The markdown report: the tables, the load and versions, and the two targets in words."""
    v = report["versions"]
    lines = [f"# DKLGP vs GPyTorch SVGP / VNNGP (n = {report['settings']['n']}, d = 5, Matern 3/2 ARD)\n",
             (f"`{report['command']}`; bayeskit {v['bayeskit']}, gpytorch {v['gpytorch']}, torch {v['torch']}, "
              f"{v['threads']} thread(s), load average {v['load_average'][0]:.2f} at the end, "
              f"{report['wall_time_s']:.0f} s in all. Zero predictor's RMSE(f): "
              f"{report['baselines']['rmse_f_zero_predictor']:.4f}. Peak MiB: the process's peak RSS above its "
              "start, over a method's whole call (training and test predictions; benchmarks/README.md)."),
             table(report["rows"]), "\n**Targets**\n"]
    yes = {True: "yes", False: "NO"}
    for likelihood, verdict in report["verdicts"].items():
        line = f"- {likelihood}: DKLGP NLL(f) below every other: {yes[verdict['dklgp_nll_f_below_every_other']]}"
        if "within_2x_of_vnngp" in verdict:
            line += (f"; DKLGP s/epoch within 2x of VNNGP: {yes[verdict['within_2x_of_vnngp']]} "
                     f"({verdict['seconds_per_epoch_ratio_to_vnngp']:.2f}x)")
        lines.append(line)
    return "\n".join(lines) + "\n"


def _command_line(argv):
    """The arguments as given, less ``--out``."""
    words, skip = [], False
    for word in argv:
        if skip or word == "--out" or word.startswith("--out="):
            skip = word == "--out"
            continue
        words.append(word)
    return "".join(" " + word for word in words)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--reorder-after", type=int, default=5)
    parser.add_argument("--rho", type=float, default=1.5, help="DKLGP's radius (sets the matched m: 1.5 gives ~8.5)")
    parser.add_argument("--m", type=int, default=9, help="m for the peers when dklgp is not run")
    parser.add_argument("--svgp-epochs", type=int, default=100, help="SVGP's budget (its epochs are cheap)")
    parser.add_argument("--ngd-lr", type=float, default=0.1, help="SVGP's NGD step (GPyTorch doc 0.1; authors 0.01)")
    parser.add_argument("--gpytorch-bernoulli", choices=("logit", "probit"), default="logit",
                        help="GPyTorch's Bernoulli link: logit (as simulated) or its own BernoulliLikelihood (probit)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--likelihoods", default="gaussian,bernoulli")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="n = 1,000, 3 epochs: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if unknown := set(args.methods) - set(METHODS):
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if args.quick:
        args.n, args.epochs, args.svgp_epochs, args.reorder_after = 1_000, 3, 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - began:7.1f} s] {message}", flush=True)

    x, f, y = simulate(args.n, args.seed)
    log(f"simulated n = {args.n}")
    split = int(0.8 * args.n)
    rows = [row for likelihood in args.likelihoods.split(",") for row in run(likelihood, x, f, y, split, args, log)]
    test = slice(split, None)
    baselines = {"rmse_f_zero_predictor": float(f[test].square().mean().sqrt()), "sd_f_test": float(f[test].std())}
    report = {"command": "python benchmarks/gp_sic_vs_gpytorch.py" + _command_line(argv),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "versions": versions(), "baselines": baselines, "rows": rows, "verdicts": verdicts(rows),
              "wall_time_s": time.perf_counter() - began}
    name = "gp_sic_vs_gpytorch" + ("_quick" if args.quick else "") + (f"_rho{args.rho:g}" if args.rho != 1.5 else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2))
    markdown = render(report)
    (args.out / f"{name}.md").write_text(markdown)
    print(markdown)
    return report


if __name__ == "__main__":
    main()
