"""Small real data sets shipped inside the package (no download at run time)."""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from importlib import resources

import torch

__all__ = ["Dataset", "load_breast_cancer"]


@dataclass(frozen=True)
class Dataset:
    """Covariates ``x`` (n, p), responses ``y`` (n,), the covariate names and a citation."""

    x: torch.Tensor
    y: torch.Tensor
    feature_names: tuple[str, ...]
    citation: str

    def standardized(self) -> Dataset:
        """Covariates centred and scaled to unit standard deviation."""
        x = (self.x - self.x.mean(0)) / self.x.std(0)
        return Dataset(x, self.y, self.feature_names, self.citation)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A random train/test split, reproducible from ``seed``."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(seed))
        n_test = int(round(test_fraction * len(self.y)))
        test, train = order[:n_test], order[n_test:]
        return (Dataset(self.x[train], self.y[train], self.feature_names, self.citation),
                Dataset(self.x[test], self.y[test], self.feature_names, self.citation))


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
