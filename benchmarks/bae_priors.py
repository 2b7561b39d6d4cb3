r"""Bayesian autoencoders (Tran et al., NeurIPS 2021): a VAE, a BAE with N(0, 1) and a BAE with the DSWD prior.

The claim under test: in the small-data regime a prior chosen by distributional sliced-Wasserstein
distance on other data gives a lower held-out NLL than the standard N(0, 1) prior and than a VAE.

Data (digits): the 8x8 digits bundled with bayeskit, ``digits_split(seed, prior=...)``: 200 images of
the digits 1-9 train, 300 more test; the prior is tuned on the 178 zeros (``zeros``, the README
command of the authors' MNIST experiment) or on 178 images of every digit set apart from both
(``all``, their script's default of 10 images per class: prior and task data of one distribution).
Data (faces, ``--faces DIR``): Frey faces tune the prior, Yale faces train (``--face-train``
images) and test (1,320 others), as in the authors' ``bae_conv_face.py``; ``DIR`` holds
``freyfaces.pkl`` and ``yalefaces.pkl`` from the ``datasets/`` folders of their repository
(https://github.com/tranbahien/bae-prior), which bayeskit does not ship.

Models: the tutorial's dense autoencoder (64 -> 128 -> 8 -> 128 -> 64, ReLU; for faces 784 -> 128 ->
16 -> 128 -> 784), Continuous-Bernoulli likelihood. The VAE is fitted by Adam (``--steps``). Each
BAE is sampled by ``AdaptiveSGHMC`` (step size 0.003 and momentum decay 0.05, the authors'; 4 chains
started at torch's default initialisation, ``--steps`` warm-up steps, 32 draws per chain thinned
over another ``--steps``). The DSWD prior: ``fit_prior`` with ``pretrain_steps = --steps`` and 2,000
prior steps at Adam 1e-3 (means) and 5e-4 (log sd), the authors' rates; 8 prior draws per batch
(32 gives the same NLL here at four times the cost).

Metric: held-out NLL per image (nats, summed over pixels), two ways: ``mixture`` averages the
likelihood over the draws (``average="likelihood"``, the model-averaged predictive) and
``mean lambda`` scores the Continuous Bernoulli at the draws' mean parameter (``average="parameter"``,
how the authors' code computes its test NLL). r_hat is the largest over the output biases.

Usage: ``python benchmarks/bae_priors.py`` (seeds 0 and 1, both prior data; about 15 minutes on one
core) or ``--quick`` (CI size; its numbers mean nothing). ``python benchmarks/bae_priors.py --data faces
--faces FACES_DIR --seeds 0 1 --steps 1000 --prior-steps 500`` (about 10 minutes) runs the faces.
Writes benchmarks/results/bae_priors{,_faces}{,_quick}.{json,md}. One thread.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
import warnings
from pathlib import Path

import torch

from bayeskit.datasets import digits_split
from bayeskit.inference import AdaptiveSGHMC
from bayeskit.models import BayesianAutoencoder, VariationalAutoencoder
from bayeskit.runner import versions

sys.path.insert(0, str(Path(__file__).parent))  # measure.py sits next to the scripts (not a package)
from measure import write_report  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODELS = ("VAE", "BAE, N(0, 1) prior", "BAE, DSWD prior")
PRIOR_DATA = ("zeros", "all")
#: The authors' AdaptiveSGHMC settings (experiments/bae_conv_mnist.py): lr (our step size) and mdecay.
STEP_SIZE, MOMENTUM_DECAY = 0.003, 0.05


def faces(directory, num_train, seed):
    """Frey faces (the prior's data) and Yale faces (training, then 1,320 test images), pixels in [0, 1]."""
    def load(name):
        with open(Path(directory) / name, "rb") as handle:
            images = torch.as_tensor(pickle.load(handle, encoding="latin1"), dtype=torch.float32) / 255
        return images.reshape(len(images), -1)

    frey, yale = load("freyfaces.pkl"), load("yalefaces.pkl")
    yale = yale[torch.randperm(len(yale), generator=torch.Generator().manual_seed(seed))]
    return frey, yale[:num_train], yale[-1320:]


def nll(bae, post, test):
    """Both test NLLs of a BAE posterior, per image."""
    return {"mixture": -float(bae.log_likelihood(post, test).mean()),
            "mean lambda": -float(bae.log_likelihood(post, test, average="parameter").mean())}


def compare(prior_x, train, test, *, architecture, steps, prior_steps, num_prior_draws, seed, batch_size=None,
            skip_standard=False):
    """The three models on one split: NLLs, r_hat, prior scales and wall times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fits' and chains' health reports: summarised in the rows instead
        return _compare(prior_x, train, test, architecture=architecture, steps=steps, prior_steps=prior_steps,
                        num_prior_draws=num_prior_draws, seed=seed, batch_size=batch_size,
                        skip_standard=skip_standard)


def _compare(prior_x, train, test, *, architecture, steps, prior_steps, num_prior_draws, seed, batch_size,
             skip_standard):
    dim = tuple(train.shape[1:])  # (64,) flat, (1, 8, 8) for convolutions
    rows = {}
    began = time.perf_counter()
    vae = VariationalAutoencoder(dim, **architecture)
    vae.fit(train, num_steps=steps, seed=seed, progress=False)
    nll_vae = -float(vae.log_likelihood(test).mean())
    rows["VAE"] = {"nll": {"mixture": nll_vae, "mean lambda": nll_vae}, "seconds": time.perf_counter() - began}
    for name in MODELS[1:]:
        if skip_standard and "N(0, 1)" in name:
            continue
        began = time.perf_counter()
        bae = BayesianAutoencoder(dim, **architecture)
        row = {}
        if "DSWD" in name:
            fit = bae.fit_prior(prior_x, num_steps=prior_steps, lr=1e-3, pretrain_steps=steps,
                                num_prior_draws=num_prior_draws, seed=seed, progress=False)
            scales = torch.cat([value.detach().exp().flatten() for value in bae.prior_log_scale.values()])
            loss = fit.trace["loss"]
            row.update(prior_sd={"median": float(scales.median()), "min": float(scales.min()),
                                 "max": float(scales.max())},
                       dswd={"first": float(loss[:20].mean()), "last": float(loss[-20:].mean())},
                       prior_seconds=time.perf_counter() - began)
        engine = AdaptiveSGHMC(bae, step_size=STEP_SIZE, momentum_decay=MOMENTUM_DECAY, num_warmup=steps,
                               num_samples=32, thin=max(1, steps // 32), num_chains=4,
                               init=bae.initial_weights(4, seed=seed))
        post = engine.run(train, batch_size, seed=seed, progress=False)
        output_bias = [site for site in bae.sites if site.startswith("dec") and site.endswith("_b")][-1]
        r_hat = post.summary(var_names=[output_bias], health=False)["r_hat"]
        row.update(nll=nll(bae, post, test), r_hat_max=float(r_hat.max()), r_hat_median=float(r_hat.median()),
                   health=[finding["check"] for finding in post.meta["health"]],
                   seconds=time.perf_counter() - began)
        rows[name] = row
    return rows


def markdown(rows):
    lines = ["| data | prior data | seed | model | NLL, mixture | NLL, mean lambda | r_hat max (median) | "
             "prior sd median (range) | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        r_hat = f"{row['r_hat_max']:.2f} ({row['r_hat_median']:.2f})" if "r_hat_max" in row else ""
        sd = row.get("prior_sd")
        sd = f"{sd['median']:.3f} ({sd['min']:.3f}-{sd['max']:.3f})" if sd else ""
        lines.append(f"| {row['data']} | {row['prior_data']} | {row['seed']} | {row['model']} | "
                     f"{row['nll']['mixture']:.1f} | {row['nll']['mean lambda']:.1f} | {r_hat} | {sd} | "
                     f"{row['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI size: 60 steps, 30 prior steps, seed 0, zeros")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--prior-data", nargs="+", choices=PRIOR_DATA, default=list(PRIOR_DATA))
    parser.add_argument("--steps", type=int, default=3000, help="VAE steps, pretraining, SGHMC warm-up")
    parser.add_argument("--prior-steps", type=int, default=2000)
    parser.add_argument("--data", nargs="+", choices=("digits", "faces"), default=["digits"])
    parser.add_argument("--faces", type=Path, default=None, help="folder with freyfaces.pkl and yalefaces.pkl")
    parser.add_argument("--face-train", type=int, default=500)
    parser.add_argument("--channels", type=int, nargs="+", default=[],
                        help="digits: 3x3 stride-2 convolutions of these widths on 1 x 8 x 8 images before the "
                             "dense layers (the authors' network is convolutional)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.prior_data, args.steps, args.prior_steps = [0], ["zeros"], 60, 30
    if "faces" in args.data and args.faces is None:
        parser.error("--data faces needs --faces DIR (freyfaces.pkl and yalefaces.pkl from the authors' repository)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # restored below: the tests call main() in-process
    try:
        rows = []
        for seed in args.seeds:
            for index, prior in enumerate(args.prior_data if "digits" in args.data else []):
                prior_x, train, test = digits_split(seed, prior=prior)
                if args.channels:  # images, not flat vectors
                    prior_x, train, test = (part.reshape(len(part), 1, 8, 8) for part in (prior_x, train, test))
                found = compare(prior_x, train, test, architecture={"latent_dim": 8, "hidden": (128,),
                                                                    "channels": tuple(args.channels)},
                                steps=args.steps, prior_steps=args.prior_steps, num_prior_draws=8, seed=seed,
                                skip_standard=index > 0)  # VAE and N(0, 1) do not see the prior data: once
                for model, row in found.items():
                    rows.append({"data": "digits", "prior_data": prior, "seed": seed, "model": model, **row})
                    print(f"digits, prior on {prior}, seed {seed}, {model}: NLL {row['nll']['mixture']:.1f} "
                          f"(mean lambda {row['nll']['mean lambda']:.1f}), {row['seconds']:.0f} s", flush=True)
            if "faces" in args.data:
                frey, train, test = faces(args.faces, args.face_train, seed)
                found = compare(frey, train, test, architecture={"latent_dim": 16, "hidden": (128,)},
                                steps=args.steps, prior_steps=args.prior_steps, num_prior_draws=8, seed=seed,
                                batch_size=64)
                for model, row in found.items():
                    rows.append({"data": "faces", "prior_data": "Frey", "seed": seed, "model": model, **row})
                    print(f"faces, seed {seed}, {model}: NLL {row['nll']['mixture']:.1f} "
                          f"(mean lambda {row['nll']['mean lambda']:.1f}), {row['seconds']:.0f} s", flush=True)
    finally:
        torch.set_num_threads(threads)
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
                if key != "out"}
    settings.update(step_size=STEP_SIZE, momentum_decay=MOMENTUM_DECAY)
    given = sys.argv[1:] if argv is None else list(argv)
    if "--out" in given:  # where the files go is no part of what produced them
        del given[given.index("--out"):given.index("--out") + 2]
    command = " ".join(["python benchmarks/bae_priors.py", *given])
    report = {"settings": settings, "command": command, "versions": {**versions(), "torch_threads": 1},
              "rows": rows}
    stem = "bae_priors" + ("_faces" if args.data == ["faces"] else "") + ("_conv" if args.channels else "") \
        + ("_quick" if args.quick else "")
    table = markdown(rows)
    write_report(args.out, stem, "Bayesian autoencoders: held-out NLL per image (lower is better)", command, table,
                 report)
    print(table)
    return report


if __name__ == "__main__":
    main()
