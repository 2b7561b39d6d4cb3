"""Stein variational gradient descent.

SVGD (Liu and Wang, 2016, "Stein Variational Gradient Descent: A General
Purpose Bayesian Inference Algorithm", NeurIPS) moves ``n`` particles along
the direction that decreases KL(q || p) fastest within the unit ball of a
reproducing-kernel Hilbert space:

.. math::

    \\phi(x_i) = \\frac{1}{n} \\sum_{j=1}^{n}
        \\big[ k(x_j, x_i)\\, \\nabla_{x_j} \\log p(x_j) + \\nabla_{x_j} k(x_j, x_i) \\big],
    \\qquad x_i \\leftarrow x_i + \\epsilon\\, \\phi(x_i).

The first term drives particles to high density, the second repels them
from each other so that they spread like the posterior.  Particles live in
the Target's unconstrained space, so constrained sites are handled by the
Target's bijections.  A pure optimiser applies the step (Adagrad by
default, as in the paper's experiments; SGD, Adam, RMSprop or your own, see
:mod:`bayeskit.optim`); ``num_chains`` independent particle
sets run in one batched step.

The functional core is :func:`svgd_direction`, :func:`svgd_init` and
:func:`svgd_step` over a state of tensors (a step returns a new one);
:class:`SVGD` binds hyperparameters and runs them through the shared runner.
"""

from bayeskit.inference.stein.core import (
    SVGDState,
    SVNGState,
    mirrored_step,
    msvgd_direction,
    svgd_direction,
    svgd_init,
    svgd_step,
    svmd_direction,
    svng_init,
    svng_step,
)
from bayeskit.inference.stein.engines import SVGD, SVMD, SVNG, MirroredSVGD
from bayeskit.inference.stein.kernels import IMQKernel, RBFKernel, make_kernel
from bayeskit.inference.stein.mirror_maps import BoxMap, CustomMirrorMap, IdentityMap, MirrorMap, OrthantMap, SimplexMap
from bayeskit.optim import SGD, Adagrad, Adam, PureOptimizer, RMSprop, make_optimizer

__all__ = [
    "SVGD", "SVGDState", "svgd_direction", "svgd_init", "svgd_step", "make_optimizer", "MirroredSVGD", "SVMD",
    "SVNG", "SVNGState", "msvgd_direction", "svmd_direction", "mirrored_step", "svng_init", "svng_step",
    "PureOptimizer", "SGD", "Adagrad", "Adam", "RMSprop", "RBFKernel",
    "IMQKernel", "make_kernel", "MirrorMap", "IdentityMap", "OrthantMap", "BoxMap", "SimplexMap", "CustomMirrorMap",
]
