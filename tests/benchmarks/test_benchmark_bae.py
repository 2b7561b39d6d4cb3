"""The Bayesian-autoencoder prior benchmark runs at CI size, writes its table and leaves torch's state alone."""

import json
import math

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
