"""The Fusion benchmark runs end to end in quick mode and its table holds what it claims."""

import json

import pytest
from conftest import REPO, load_benchmark

BENCHMARK = REPO / "benchmarks" / "fusion.py"


def load_module():
    return load_benchmark("fusion.py", "fusion_benchmark")


@pytest.mark.slow
def test_quick_benchmark_writes_its_table(tmp_path, float64, one_thread):  # main() sets both; they restore them
    report = load_module().main(["--quick", "--out", str(tmp_path)])
    rows = {(row["shards"], row["method"]): row for row in report["rows"]}
    assert set(rows) == {(c, m) for c in (2, 4) for m in ("D&C-GBF", "GBF fork-join", "CMC", "Weierstrass")}
    for (_, method), row in rows.items():
        assert 0 <= row["iad"] <= 1 and row["fusion_seconds"] >= 0
        if method.startswith(("D&C", "GBF")):
            assert row["estimator"] == "exact" and not row["approximate"] and 0 < row["final_ess"] <= 1
    # 200 draws against 400: the floor of the IAD is about 0.1; a broken fusion lands far above it
    assert rows[(4, "D&C-GBF")]["iad"] < 0.3
    saved = json.loads((tmp_path / "fusion_quick.json").read_text())
    assert saved["verdicts"] == report["verdicts"] and "pyro" in saved["versions"]
    assert "| D&C-GBF |" in (tmp_path / "fusion_quick.md").read_text()
