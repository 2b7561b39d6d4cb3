"""The pure optimisers against torch.optim (ground truth we did not write), and their purity."""

import copy

import pytest
import torch

from bayeskit.optim import SGD, Adagrad, Adam, PureOptimizer, RMSprop, make_optimizer

#: name -> (pure optimiser, the torch.optim optimiser it must reproduce), both with the engines' settings.
PAIRS = {
    "sgd": (SGD(lr=0.05), lambda params: torch.optim.SGD(params, lr=0.05)),
    "adagrad": (Adagrad(lr=0.5), lambda params: torch.optim.Adagrad(params, lr=0.5)),
    "adam": (Adam(lr=0.05), lambda params: torch.optim.Adam(params, lr=0.05)),
    "rmsprop": (RMSprop(lr=0.03), lambda params: torch.optim.RMSprop(params, lr=0.03, alpha=0.9, eps=1e-7)),
}


def gradients(num_steps=50, shape=(2, 5, 3)):
    """Gradients over several scales, with some exact zeros (where the denominators' eps matters)."""
    generator = torch.Generator().manual_seed(0)
    grads = torch.randn(num_steps, *shape, generator=generator, dtype=torch.float64)
    grads *= torch.logspace(-3, 1, num_steps, dtype=torch.float64).reshape(-1, 1, 1, 1)
    grads[::7, 0, 0] = 0.0
    return grads


@pytest.mark.parametrize("name", list(PAIRS))
def test_each_pure_optimiser_follows_torch_optim(name):
    pure, torch_optimizer = PAIRS[name]
    start = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaf = start.clone().requires_grad_(True)
    reference = torch_optimizer([leaf])
    params, state = start, pure.init(start)
    for grad in gradients():
        reference.zero_grad(set_to_none=False)
        leaf.grad = grad.clone()
        reference.step()
        params, state = pure.update(grad, state, params)
        torch.testing.assert_close(params, leaf.detach(), rtol=1e-12, atol=0)
    assert not torch.equal(params, start)


@pytest.mark.parametrize("name", list(PAIRS))
def test_an_update_returns_new_tensors_and_leaves_its_inputs_alone(name):
    pure, _ = PAIRS[name]
    params = torch.randn(2, 5, 3, dtype=torch.float64)
    grads = gradients(3)
    _, state = pure.update(grads[0], pure.init(params), params)
    inputs = copy.deepcopy((grads[1], state, params))
    new_params, new_state = pure.update(grads[1], state, params)
    for before, after in zip(inputs, (grads[1], state, params)):
        torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert new_state.keys() == state.keys()
    assert all(new_state[key] is not state[key] for key in state) and new_params is not params


def test_names_build_the_pure_optimisers_with_the_learning_rate():
    assert make_optimizer("Adam", 0.1) == Adam(lr=0.1)
    assert make_optimizer("rmsprop", 0.03) == RMSprop(lr=0.03, alpha=0.9, eps=1e-7)
    custom = Adagrad(lr=0.2, eps=1e-6)
    assert make_optimizer(custom, 0.5) is custom
    assert isinstance(custom, PureOptimizer)


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, lambda params: torch.optim.SGD(params, lr=0.1), Adam])
def test_torch_optimisers_and_factories_are_refused_with_how_to_write_a_pure_one(optimizer):
    with pytest.raises(TypeError, match=r"init\(params\).*update\(grad, state, params\)"):
        make_optimizer(optimizer, 0.1)


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'.*'adagrad', 'adam', 'rmsprop', 'sgd'"):
        make_optimizer("lbfgs", 0.1)
