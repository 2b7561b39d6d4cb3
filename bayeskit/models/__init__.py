"""Model families: ordinary Pyro models and PyroModules that every engine can take."""

from bayeskit.models.glm import logistic_regression

__all__ = ["logistic_regression"]
