"""bayeskit: Bayesian inference engines and model families on Pyro, exported through ArviZ."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bayeskit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

import importlib  # noqa: E402

from bayeskit import diagnostics, health  # noqa: E402
from bayeskit.health import HealthWarning  # noqa: E402
from bayeskit.posterior import Posterior, load  # noqa: E402
from bayeskit.runner import NonFiniteError  # noqa: E402
from bayeskit.target import Site, Target  # noqa: E402

#: Imported on first use, so that ``import bayeskit.models`` does not load the engines (nor the engines the models).
_LAZY_SUBPACKAGES = ("inference", "models")


def __getattr__(name):
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"bayeskit.{name}")
    raise AttributeError(f"module 'bayeskit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBPACKAGES))


__all__ = ["Posterior", "Target", "Site", "NonFiniteError", "HealthWarning", "load", "inference", "models",
           "diagnostics", "health", "__version__"]
