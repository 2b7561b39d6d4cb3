"""The bundled GBP/USD series against the file that the particles package ships."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bayeskit.datasets import TimeSeries, load_gbp_usd


def _particles_file() -> Path:
    pytest.importorskip("particles")
    import particles.datasets

    return particles.datasets.get_path("GBP_vs_USD_9798.txt")


def test_shape_dates_and_dtype():
    series = load_gbp_usd(dtype=torch.float64)
    assert isinstance(series, TimeSeries)
    assert series.values.shape == (751,) and series.values.dtype == torch.float64
    assert len(series.dates) == 751
    assert series.dates[0] == "1997-01-02" and series.dates[-1] == "1999-12-31"
    assert list(series.dates) == sorted(set(series.dates))  # increasing, no repeats
    assert all(len(d) == 10 and d[4] == d[7] == "-" for d in series.dates)
    assert torch.all((series.values > 0.5) & (series.values < 0.7))
    assert load_gbp_usd().values.dtype == torch.get_default_dtype()
    assert "Antweiler" in series.citation


def test_values_equal_the_raw_text_file():
    lines = _particles_file().read_text().splitlines()
    rows = [line.split() for line in lines[2:] if not line.startswith("(C)")]
    series = load_gbp_usd(dtype=torch.float64)
    assert series.dates == tuple(date.replace("/", "-") for _, date, _, _ in rows)
    expected = torch.tensor([float(rate) for *_, rate in rows], dtype=torch.float64)
    assert torch.equal(series.values, expected)


def test_log_returns_equal_particles_data():
    pytest.importorskip("particles")
    from particles.datasets import GBP_vs_USD_9798

    reference = np.asarray(GBP_vs_USD_9798().data, dtype=np.float64)
    returns = load_gbp_usd(dtype=torch.float64).log_returns()
    assert returns.shape == (750,) == reference.shape
    np.testing.assert_allclose(returns.numpy(), reference, rtol=0, atol=1e-10)


def test_log_returns_options():
    series = load_gbp_usd(dtype=torch.float64)
    values = series.values.numpy()
    np.testing.assert_allclose(series.log_returns(scale=1.0).numpy(), np.diff(np.log(values)), rtol=0, atol=1e-14)
    centred = series.log_returns(demeaned=True)
    assert abs(float(centred.mean())) < 1e-12
    torch.testing.assert_close(centred, series.log_returns() - series.log_returns().mean())
    # float32 values still give float32 returns, computed in float64 first
    single = load_gbp_usd(dtype=torch.float32).log_returns()
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), series.log_returns(), rtol=0, atol=1e-4)


def test_frozen():
    series = load_gbp_usd()
    with pytest.raises(dataclasses.FrozenInstanceError):
        series.values = torch.zeros(3)
