"""Maximin ordering and the sparsity/ancestor/global/prediction sets against their O(n^2) definitions."""

import numpy as np
import pytest
import torch

from bayeskit.models.gp_sic import ordering


def brute_maximin(x):
    first = int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))
    order, distances = [first], [np.inf]
    current = np.sqrt(((x - x[first]) ** 2).sum(1))
    current[first] = -1
    for _ in range(len(x) - 1):
        point = int(np.argmax(current))  # ties: the lowest row
        order.append(point)
        distances.append(current[point])
        current = np.minimum(current, np.sqrt(((x - x[point]) ** 2).sum(1)))
        current[order] = -1
    return np.array(order), np.array(distances)


def pairwise(a, b):
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))


def brute_sets(mask):
    return [np.flatnonzero(row) for row in mask]


def as_sets(csr):
    indptr, indices = csr
    assert indptr.dtype == indices.dtype == np.int64
    assert indptr[0] == 0 and (np.diff(indptr) >= 0).all() and indptr[-1] == len(indices)
    sets = [indices[indptr[i]:indptr[i + 1]] for i in range(len(indptr) - 1)]
    assert all((np.diff(s) > 0).all() for s in sets)  # sorted, no repeats
    return sets


def assert_same_sets(csr, expected):
    got = as_sets(csr)
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.tolist() == b.tolist(), f"row {i}: got {a.tolist()}, expected {b.tolist()}"


@pytest.fixture(params=[2, 5])
def points(request):
    x = np.random.default_rng(request.param).random((300, request.param))
    order, distances = ordering.maximin_order(x)
    return x, order, distances, pairwise(x[order], x[order])


def test_maximin_order_is_the_definition(points):
    x, order, distances, distance = points
    expected_order, expected_distances = brute_maximin(x)
    np.testing.assert_array_equal(order, expected_order)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-12)
    assert order.dtype == np.int64 and np.isinf(distances[0]) and (np.diff(distances[1:]) <= 0).all()
    earlier = np.where(np.tril(np.ones_like(distance), -1) > 0, distance, np.inf).min(1)
    np.testing.assert_allclose(distances[1:], earlier[1:], rtol=1e-12)


def test_ties_and_repeated_points_follow_the_definition():
    grid = np.stack(np.meshgrid(np.arange(9.0), np.arange(7.0)), -1).reshape(-1, 2)
    x = np.vstack([grid, grid[:10]])  # ties everywhere, and ten points given twice (l = 0)
    for got, expected in zip(ordering.maximin_order(x), brute_maximin(x)):
        np.testing.assert_array_equal(got, expected)
    order, distances = ordering.maximin_order(x)
    assert (distances[-10:] == 0).all()
    distance = pairwise(x[order], x[order])
    lower = np.tril(np.ones_like(distance)) > 0
    assert_same_sets(ordering.sparsity_pattern(x[order], distances, 1.5),
                     brute_sets(lower & (distance <= 1.5 * distances[:, None])))
    assert_same_sets(ordering.ancestor_sets(x[order], distances, 1.5),
                     brute_sets(lower & (distance <= 1.5 * distances[None, :])))


def test_lengthscales_scale_the_inputs():
    x = np.random.default_rng(0).random((200, 3))
    scale = np.array([0.2, 1.0, 3.0])
    for lengthscale in (scale, torch.tensor(scale)):
        for got, expected in zip(ordering.maximin_order(x, lengthscale=lengthscale), ordering.maximin_order(x / scale)):
            np.testing.assert_array_equal(got, expected)
    for got, expected in zip(ordering.maximin_order(x, lengthscale=0.5), ordering.maximin_order(x / 0.5)):
        np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(ordering.maximin_order(x, lengthscale=scale)[0], ordering.maximin_order(x)[0])


def test_torch_inputs_give_the_numpy_answers(points):
    x, order, distances, _ = points
    got = ordering.maximin_order(torch.tensor(x))
    np.testing.assert_array_equal(got[0], order)
    np.testing.assert_array_equal(got[1], distances)
    for a, b in zip(ordering.sparsity_pattern(torch.tensor(x[order]), torch.tensor(distances), 2.0),
                    ordering.sparsity_pattern(x[order], distances, 2.0)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rho", [1.0, 1.5, 3.0, 1e6])
def test_sparsity_and_ancestor_sets_are_their_definitions(points, rho):
    x, order, distances, distance = points
    lower = np.tril(np.ones_like(distance)) > 0
    sparsity = ordering.sparsity_pattern(x[order], distances, rho)
    ancestors = ordering.ancestor_sets(x[order], distances, rho)
    assert_same_sets(sparsity, brute_sets(lower & (distance <= rho * distances[:, None])))
    assert_same_sets(ancestors, brute_sets(lower & (distance <= rho * distances[None, :])))
    for i, (s, a) in enumerate(zip(as_sets(sparsity), as_sets(ancestors))):
        assert s[-1] == i and a[-1] == i and a[0] == 0 and np.isin(s, a).all()
    if rho == 1e6:  # every ball holds everything: the full lower triangle
        assert all(len(s) == len(a) == i + 1 for i, (s, a) in enumerate(zip(as_sets(sparsity), as_sets(ancestors))))
    if rho == 1.0:  # S_i is i and its nearest earlier point(s), nothing else for continuous data
        assert all(len(s) == 2 for s in as_sets(sparsity)[1:])


@pytest.mark.parametrize("rho", [1.0, 2.0])
def test_prediction_sets_are_their_definitions(points, rho):
    x, order, distances, _ = points
    x_new = np.random.default_rng(7).random((40, x.shape[1]))
    x_new[0] = x[order[10]]  # on a training point: l_t = 0, and S_t still holds that point
    distance = pairwise(x_new, x[order])
    nearest = distance.min(1, keepdims=True)
    s_expected = brute_sets(distance <= rho * nearest * (1 + 1e-12))
    a_expected = [np.union1d(s, np.flatnonzero(row <= rho * distances)) for s, row in zip(s_expected, distance)]
    s_csr, a_csr = ordering.prediction_pattern(x[order], distances, x_new, rho)
    assert_same_sets(s_csr, s_expected)
    assert_same_sets(a_csr, a_expected)
    assert as_sets(s_csr)[0].tolist() == [10]
    assert all(a[0] == 0 for a in as_sets(a_csr))


def test_prediction_sets_keep_the_nearest_members_when_capped(points):
    x, order, distances, _ = points
    x_new = np.random.default_rng(8).random((30, x.shape[1])) * 3.0  # many far outside the data: wide sets
    (full_ptr, full), _ = ordering.prediction_pattern(x[order], distances, x_new, 2.0)
    (ptr, capped), (a_ptr, a_sets) = ordering.prediction_pattern(x[order], distances, x_new, 2.0, max_size=5)
    distance = pairwise(x_new, x[order])
    for t in range(len(x_new)):
        members, wide = capped[ptr[t]:ptr[t + 1]], full[full_ptr[t]:full_ptr[t + 1]]
        assert len(members) == min(5, len(wide)) and np.isin(members, wide).all()
        np.testing.assert_allclose(np.sort(distance[t, members]), np.sort(distance[t, wide])[:len(members)])
        assert np.isin(members, a_sets[a_ptr[t]:a_ptr[t + 1]]).all()


@pytest.mark.parametrize("num_global", [1, 7, 300, 500])
def test_global_pattern_is_its_definition(num_global):
    n = 300
    expected = [np.union1d(np.arange(min(i, num_global)), [i]) for i in range(n)]
    assert_same_sets(ordering.global_pattern(n, num_global), expected)


def test_a_single_point():
    order, distances = ordering.maximin_order(np.array([[0.3, 0.4]]))
    assert order.tolist() == [0] and np.isinf(distances).all()
    for pattern in (ordering.sparsity_pattern, ordering.ancestor_sets):
        assert [s.tolist() for s in as_sets(pattern(np.array([[0.3, 0.4]]), distances, 2.0))] == [[0]]
    s_csr, a_csr = ordering.prediction_pattern(np.array([[0.3, 0.4]]), distances, np.zeros((2, 2)), 2.0)
    assert [s.tolist() for s in as_sets(s_csr)] == [[0], [0]] == [a.tolist() for a in as_sets(a_csr)]


def test_a_larger_ordering_runs_and_stays_maximin():
    x = np.random.default_rng(1).random((20_000, 2))
    order, distances = ordering.maximin_order(x)
    assert sorted(order.tolist()) == list(range(20_000))
    assert (np.diff(distances[1:]) <= 0).all()
    # each l_k is the distance to the nearest earlier point: check a sample against brute force
    for k in np.random.default_rng(2).choice(np.arange(1, 20_000), 50, replace=False):
        earlier = np.sqrt(((x[order[:k]] - x[order[k]]) ** 2).sum(1)).min()
        np.testing.assert_allclose(distances[k], earlier, rtol=1e-12)
    sparsity = ordering.sparsity_pattern(x[order], distances, 2.0)
    ancestors = ordering.ancestor_sets(x[order], distances, 2.0)
    assert 3 < len(sparsity[1]) / 20_000 < len(ancestors[1]) / 20_000 < 200


bad_calls = {
    "x 1-D": (lambda: ordering.maximin_order(np.zeros(3)), ValueError, "x must have shape"),
    "x empty": (lambda: ordering.maximin_order(np.zeros((0, 2))), ValueError, "x must have shape"),
    "x nan": (lambda: ordering.maximin_order(np.array([[np.nan, 0.0]])), ValueError, "x must be finite"),
    "x text": (lambda: ordering.maximin_order([["a", "b"]]), TypeError, "x must be a numeric"),
    "lengthscale < 0": (lambda: ordering.maximin_order(np.ones((3, 2)), lengthscale=[1.0, -1.0]), ValueError,
                        "lengthscale"),
    "lengthscale 0": (lambda: ordering.maximin_order(np.ones((3, 2)), lengthscale=0.0), ValueError, "lengthscale"),
    "lengthscale size": (lambda: ordering.maximin_order(np.ones((3, 2)), lengthscale=[1.0] * 3), ValueError,
                         "lengthscale"),
    "rho < 1": (lambda: ordering.sparsity_pattern(np.ones((3, 2)), np.ones(3), 0.5), ValueError, "rho"),
    "rho text": (lambda: ordering.ancestor_sets(np.ones((3, 2)), np.ones(3), "2"), TypeError, "rho"),
    "distances size": (lambda: ordering.ancestor_sets(np.ones((3, 2)), np.ones(4), 2.0), ValueError, "distances"),
    "x_ordered 1-D": (lambda: ordering.sparsity_pattern(np.ones(3), np.ones(3), 2.0), ValueError, "x_ordered"),
    "num_global 0": (lambda: ordering.global_pattern(5, 0), ValueError, "num_global"),
    "num_global float": (lambda: ordering.global_pattern(5, 2.5), TypeError, "num_global"),
    "n 0": (lambda: ordering.global_pattern(0, 3), ValueError, "n must"),
    "x_new columns": (lambda: ordering.prediction_pattern(np.ones((3, 2)), np.ones(3), np.ones((2, 3)), 1.5),
                      ValueError, "x_new"),
    "max_size 0": (lambda: ordering.prediction_pattern(np.ones((3, 2)), np.ones(3), np.ones((2, 2)), 1.5, 0),
                   ValueError, "max_size"),
}


@pytest.mark.parametrize("name", list(bad_calls))
def test_bad_input_is_refused_by_name(name):
    call, error, message = bad_calls[name]
    with pytest.raises(error, match=message):
        call()
