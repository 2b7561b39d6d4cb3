"""Maximin ordering and the sparsity/ancestor sets against their O(n^2) definitions."""

import numpy as np
import pytest

from bayeskit.models.gp_sic import ordering


def brute_maximin(x):
    first = int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))
    order, distances = [first], [np.inf]
    current = np.sqrt(((x - x[first]) ** 2).sum(1))
    current[first] = -1
    for _ in range(len(x) - 1):
        point = int(np.argmax(current))
        order.append(point)
        distances.append(current[point])
        current = np.minimum(current, np.sqrt(((x - x[point]) ** 2).sum(1)))
        current[order] = -1
    return np.array(order), np.array(distances)


def brute_sets(rows):
    return [np.flatnonzero(row) for row in rows]


def as_sets(csr):
    indptr, indices = csr
    return [indices[indptr[i]:indptr[i + 1]] for i in range(len(indptr) - 1)]


def same_sets(csr, sets):
    got = as_sets(csr)
    return len(got) == len(sets) and all(np.array_equal(a, b) for a, b in zip(got, sets))


@pytest.fixture(params=[2, 5])
def points(request):
    x = np.random.default_rng(request.param).random((300, request.param))
    order, distances = ordering.maximin_order(x)
    distance = np.sqrt(((x[order][:, None] - x[order][None]) ** 2).sum(-1))
    return x, order, distances, distance


def test_maximin_order_is_the_definition(points):
    x, order, distances, distance = points
    expected_order, expected_distances = brute_maximin(x)
    np.testing.assert_array_equal(order, expected_order)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-12)
    assert (np.diff(distances[1:]) <= 0).all()
    earlier = np.where(np.tril(np.ones_like(distance), -1) > 0, distance, np.inf).min(1)
    np.testing.assert_allclose(distances[1:], earlier[1:], rtol=1e-12)


def test_lengthscales_scale_the_inputs():
    x = np.random.default_rng(0).random((200, 3))
    scale = np.array([0.2, 1.0, 3.0])
    for got, expected in zip(ordering.maximin_order(x, lengthscale=scale), ordering.maximin_order(x / scale)):
        np.testing.assert_allclose(got, expected)


@pytest.mark.parametrize("rho", [1.0, 1.5, 3.0, 1e6])
def test_sparsity_and_ancestor_sets_are_their_definitions(points, rho):
    x, order, distances, distance = points
    lower = np.tril(np.ones_like(distance)) > 0
    sparsity = ordering.sparsity_pattern(x[order], distances, rho)
    ancestors = ordering.ancestor_sets(x[order], distances, rho)
    assert same_sets(sparsity, brute_sets(lower & (distance <= rho * distances[:, None])))
    assert same_sets(ancestors, brute_sets(lower & (distance <= rho * distances[None, :])))
    for s, a, i in zip(as_sets(sparsity), as_sets(ancestors), range(len(x))):
        assert s[-1] == i and a[-1] == i and np.isin(s, a).all()
    if rho == 1e6:
        assert all(len(s) == i + 1 for i, s in enumerate(as_sets(sparsity)))


@pytest.mark.parametrize("rho", [1.0, 2.0])
def test_prediction_sets_are_their_definitions(points, rho):
    x, order, distances, _ = points
    x_new = np.random.default_rng(7).random((40, x.shape[1]))
    x_new[0] = x[order[10]]  # on a training point: l_t = 0, and s_t still holds that point
    distance = np.sqrt(((x_new[:, None] - x[order][None]) ** 2).sum(-1))
    nearest = distance.min(1, keepdims=True)
    s_expected = brute_sets(distance <= rho * nearest * (1 + 1e-12))
    a_expected = [np.union1d(s, np.flatnonzero(row <= rho * distances)) for s, row in zip(s_expected, distance)]
    s_csr, a_csr = ordering.prediction_pattern(x[order], distances, x_new, rho)
    assert same_sets(s_csr, s_expected) and same_sets(a_csr, a_expected)
    assert as_sets(s_csr)[0].tolist() == [10]


def test_prediction_sets_keep_the_nearest_members_when_capped(points):
    x, order, distances, _ = points
    x_new = np.random.default_rng(8).random((30, x.shape[1])) * 3.0  # many far outside the data: wide sets
    (full_ptr, full), _ = ordering.prediction_pattern(x[order], distances, x_new, 2.0)
    (ptr, capped), (a_ptr, a_sets) = ordering.prediction_pattern(x[order], distances, x_new, 2.0, max_size=5)
    distance = np.sqrt(((x_new[:, None] - x[order][None]) ** 2).sum(-1))
    for t in range(len(x_new)):
        members, wide = capped[ptr[t]:ptr[t + 1]], full[full_ptr[t]:full_ptr[t + 1]]
        assert len(members) == min(5, len(wide)) and np.isin(members, wide).all()
        nearest = np.sort(distance[t, wide])[:len(members)]
        np.testing.assert_allclose(np.sort(distance[t, members]), nearest)
        assert np.isin(members, a_sets[a_ptr[t]:a_ptr[t + 1]]).all()


def test_global_pattern():
    sets = as_sets(ordering.global_pattern(10, 3))
    assert [s.tolist() for s in sets[:5]] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 4]]


def test_a_larger_ordering_runs_and_stays_maximin():
    x = np.random.default_rng(1).random((20_000, 2))
    order, distances = ordering.maximin_order(x)
    assert sorted(order.tolist()) == list(range(20_000))
    assert (np.diff(distances[1:]) <= 1e-15).all()
    sets = ordering.sparsity_pattern(x[order], distances, 2.0)
    assert 3 < len(sets[1]) / 20_000 < 10


@pytest.mark.parametrize("call, message", [
    (lambda: ordering.maximin_order(np.zeros(3)), "x must have shape"),
    (lambda: ordering.maximin_order(np.array([[np.nan, 0.0]])), "finite"),
    (lambda: ordering.maximin_order(np.ones((3, 2)), lengthscale=[1.0, -1.0]), "lengthscale"),
    (lambda: ordering.maximin_order(np.ones((3, 2)), lengthscale=[1.0, 1.0, 1.0]), "lengthscale"),
    (lambda: ordering.sparsity_pattern(np.ones((3, 2)), np.ones(3), 0.5), "rho"),
    (lambda: ordering.global_pattern(5, 0), "num_global"),
    (lambda: ordering.prediction_pattern(np.ones((3, 2)), np.ones(3), np.ones((2, 3)), 1.5), "x_new"),
])
def test_bad_input_is_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()
