"""bayeskit: Bayesian inference engines and model families on Pyro, exported through ArviZ."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bayeskit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from bayeskit import diagnostics, health, inference, models  # noqa: E402
from bayeskit.posterior import Posterior, load  # noqa: E402
from bayeskit.health import HealthWarning  # noqa: E402
from bayeskit.runner import NonFiniteError  # noqa: E402
from bayeskit.target import Site, Target  # noqa: E402

__all__ = ["Posterior", "Target", "Site", "NonFiniteError", "HealthWarning", "load", "inference", "models",
           "diagnostics", "health", "__version__"]
