"""Tests of meanfield.measures: isometry, isometry gap, potential, correlations, orthogonality gap."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meanfield import measures as M

FAST = settings(max_examples=40, deadline=None)


def random_gram(rng: np.random.Generator, n: int, d: int | None = None, scales=None) -> np.ndarray:
    """K = X X^T / d for Gaussian X (n x d), optionally with rows rescaled by ``scales``."""
    d = n + 4 if d is None else d
    X = rng.standard_normal((n, d))
    if scales is not None:
        X = X * np.asarray(scales)[:, None]
    return X @ X.T / d


def random_orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    Q, R = np.linalg.qr(rng.standard_normal((n, n)))
    return Q * np.sign(np.diag(R))


def equicorrelated(n: int, rho: float) -> np.ndarray:
    return (1.0 - rho) * np.eye(n) + rho * np.ones((n, n))


class no_warnings:
    """Context manager turning every warning into an error."""

    def __enter__(self):
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")
        return self

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


# ---------------------------------------------------------------------------------------------------------
# isometry: closed forms and exact values
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
@pytest.mark.parametrize("frac", [-0.9, -0.5, -0.1, 0.0, 0.1, 0.5, 0.9, 0.99])
def test_isometry_equicorrelated_closed_form(n, frac):
    # rho ranges over (-1/(n-1), 1): negative values are a fraction of the lower limit
    rho = frac / (n - 1) if frac < 0 else frac
    K = equicorrelated(n, rho)
    expected = ((1 + (n - 1) * rho) * (1 - rho) ** (n - 1)) ** (1.0 / n)
    assert M.isometry(K) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert M.isometry_gap(K) == pytest.approx(-math.log(expected), rel=1e-10, abs=1e-13)
    # the potential of an equicorrelated Gram and its mean correlation
    assert M.potential(K) == pytest.approx(abs(rho) / (1 - abs(rho)), rel=1e-12, abs=1e-15)
    assert M.mean_correlation(K) == pytest.approx(rho, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("c", [1.0, 3.7, 1e-30, 2.5e40])
def test_multiple_of_identity_is_exactly_isometric(n, c):
    K = c * np.eye(n)
    assert M.isometry(K) == 1.0
    assert M.isometry_gap(K) == 0.0
    assert M.potential(K) == 0.0
    assert M.am_gm_ratio(K) == 1.0
    assert M.orthogonality_gap_gram(K) == pytest.approx(0.0, abs=1e-15)


def test_scalar_results_are_floats():
    K = equicorrelated(4, 0.3)
    for f in (
        M.isometry,
        M.isometry_gap,
        M.potential,
        M.mean_correlation,
        M.am_gm_ratio,
        M.orthogonality_gap_gram,
    ):
        v = f(K)
        assert isinstance(v, float), f.__name__
    assert isinstance(M.orthogonality_gap(np.ones((3, 2))), float)


def test_isometry_is_amgm_of_eigenvalues_and_in_unit_interval():
    rng = np.random.default_rng(1)
    for n in (2, 5, 12):
        K = random_gram(rng, n)
        lam = np.linalg.eigvalsh(K)
        expected = np.exp(np.mean(np.log(lam))) / np.mean(lam)
        assert M.isometry(K) == pytest.approx(expected, rel=1e-12)
        assert M.isometry(K) == pytest.approx(np.linalg.det(K) ** (1 / n) / (np.trace(K) / n), rel=1e-10)
        assert 0.0 < M.isometry(K) < 1.0


# ---------------------------------------------------------------------------------------------------------
# invariances (hypothesis over random matrices)
# ---------------------------------------------------------------------------------------------------------


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 9),
    extra=st.integers(1, 10),
    log10c=st.floats(-60, 60),
)
def test_isometry_invariant_under_scaling_and_rotation(seed, n, extra, log10c):
    rng = np.random.default_rng(seed)
    K = random_gram(rng, n, n + extra)
    Q = random_orthogonal(rng, n)
    c = 10.0**log10c
    iso, gap = M.isometry(K), M.isometry_gap(K)
    assert 0.0 <= iso <= 1.0
    assert gap == pytest.approx(-math.log(iso), rel=1e-12, abs=1e-12)
    # the smallest eigenvalue can be small: compare gaps with a tolerance scaled by the conditioning
    lam = np.linalg.eigvalsh(K)
    tol = 1e-12 * lam[-1] / lam[0]
    assert abs(M.isometry_gap(c * K) - gap) <= tol
    QKQ = Q @ K @ Q.T
    assert abs(M.isometry_gap(QKQ) - gap) <= tol
    assert M.isometry(c * QKQ) == pytest.approx(iso, rel=tol, abs=1e-300)
    # the potential and correlations are scale invariant too
    assert M.potential(c * K) == pytest.approx(M.potential(K), rel=1e-12)
    np.testing.assert_allclose(M.correlations(c * K), M.correlations(K), rtol=1e-13, atol=1e-15)


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 8), spread=st.floats(0.0, 3.0))
def test_am_gm_identity(seed, n, spread):
    """Rescaling samples to equal norm multiplies isometry by exactly AM/GM of the diagonal."""
    rng = np.random.default_rng(seed)
    scales = np.exp(spread * rng.standard_normal(n))
    K = random_gram(rng, n, n + 6, scales)
    d = np.diag(K)
    ratio = M.am_gm_ratio(K)
    assert ratio == pytest.approx(np.mean(d) / np.exp(np.mean(np.log(d))), rel=1e-12)
    assert ratio >= 1.0
    C = M.correlations(K)
    # eigenvalues carry errors ~ eps * lambda_max: the tolerance scales with the worse conditioning
    tol = 1e-12 * max(np.linalg.cond(K), np.linalg.cond(C))
    assert M.isometry(C) / M.isometry(K) == pytest.approx(ratio, rel=tol)
    assert M.isometry(C) >= M.isometry(K) * (1 - 1e-12)  # never decreases
    # the gap identity, in log space
    assert M.isometry_gap(K) - M.isometry_gap(C) == pytest.approx(math.log(ratio), abs=tol)


def test_am_gm_ratio_zero_norm_sample_is_inf():
    K = np.diag([1.0, 2.0, 0.0])
    with no_warnings():
        assert M.am_gm_ratio(K) == math.inf


# ---------------------------------------------------------------------------------------------------------
# singular matrices: exactly 0 and +inf, no warnings, never NaN
# ---------------------------------------------------------------------------------------------------------


def test_singular_gram_gives_zero_and_inf_without_warnings():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, 3))  # rank 3 < 6
    cases = [
        X @ X.T / 3,
        np.ones((4, 4)),
        np.diag([1.0, 2.0, 0.0]),
        np.array([[1.0, 1.0], [1.0, 1.0]]),
        equicorrelated(5, -0.25),  # rho = -1/(n-1): singular
    ]
    with no_warnings():
        for K in cases:
            assert M.isometry(K) == 0.0
            assert M.isometry_gap(K) == math.inf
        stack = M.isometry_gap(np.stack([np.ones((3, 3)), np.eye(3)]))
        assert stack[0] == math.inf and stack[1] == 0.0


def test_three_vector_example():
    """x1 _|_ x2, x3 = (x1 + x2)/sqrt 2: potential 2.414 but a singular Gram matrix (gap +inf)."""
    s = 1 / math.sqrt(2)
    X = np.array([[1.0, 0.0], [0.0, 1.0], [s, s]])
    K = X @ X.T
    expected = s / (1 - s)
    assert expected == pytest.approx(1 / (math.sqrt(2) - 1))
    assert expected == pytest.approx(2.414213562373095)
    with no_warnings():
        assert M.potential(K) == pytest.approx(expected, rel=1e-12)
        assert M.isometry(K) == 0.0
        assert M.isometry_gap(K) == math.inf


def test_duplicate_inputs_give_infinite_potential():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((4, 7)) * 3.3
    X[2] = X[0]
    K = X @ X.T / 7
    with no_warnings():
        assert M.potential(K) == math.inf
        assert M.correlations(K)[0, 2] == 1.0
    # anti-collinear samples too
    X[3] = -X[1]
    with no_warnings():
        assert M.potential(X @ X.T) == math.inf
        assert M.correlations(X @ X.T)[1, 3] == -1.0


def test_rcond_controls_the_singular_threshold():
    K = np.diag([1.0, 1e-14])
    assert M.isometry(K) == pytest.approx(1e-7 / ((1 + 1e-14) / 2), rel=1e-12)
    assert M.isometry(K, rcond=1e-12) == 0.0
    # rcond = 0 keeps positive round-off eigenvalues but still clips negative ones
    assert M.isometry(np.diag([1.0, 1e-17]), rcond=0.0) > 0.0
    assert M.isometry(np.diag([1.0, 1e-17])) == 0.0
    with pytest.raises(ValueError, match="rcond"):
        M.isometry(K, rcond=-1.0)


def test_tiny_negative_eigenvalue_from_round_off_is_clipped():
    K = np.diag([1.0, 2.0, -1e-13])
    assert np.array_equal(M.check_gram(K), K)
    with no_warnings():
        assert M.isometry(K) == 0.0
        assert M.isometry_gap(K) == math.inf


# ---------------------------------------------------------------------------------------------------------
# potential and correlations
# ---------------------------------------------------------------------------------------------------------


def test_potential_small_cases():
    assert M.potential(np.array([[2.5]])) == 0.0
    K = np.array([[4.0, -1.0, 0.0], [-1.0, 1.0, 0.2], [0.0, 0.2, 1.0]])
    # rho_12 = -1/2 -> 1; rho_23 = 0.2 -> 0.25
    assert M.potential(K) == pytest.approx(1.0, rel=1e-15)
    rho = M.correlations(K)
    assert np.array_equal(np.diag(rho), np.ones(3))
    assert rho[0, 1] == pytest.approx(-0.5, rel=1e-15)
    assert M.mean_correlation(K) == pytest.approx((-0.5 + 0.0 + 0.2) / 3, rel=1e-14)


def test_correlations_are_clipped_to_unit_interval():
    # a round-off perturbation that pushes |rho| past 1 but stays PSD within tolerance
    K = np.array([[1.0, 1.0 + 1e-12], [1.0 + 1e-12, 1.0]])
    rho = M.correlations(K)
    assert np.all(np.abs(rho) <= 1.0)
    assert M.potential(K) == math.inf


# ---------------------------------------------------------------------------------------------------------
# orthogonality gap
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,n", [(4, 4), (10, 3), (50, 7)])
def test_orthogonality_gap_orthogonal_and_rank_one(d, n):
    rng = np.random.default_rng(d * n)
    Q = random_orthogonal(rng, d)[:, :n] * 3.0  # orthogonal columns, equal norms
    assert M.orthogonality_gap(Q) == pytest.approx(0.0, abs=1e-14)
    assert M.orthogonality_gap_gram(Q.T @ Q) == pytest.approx(0.0, abs=1e-14)
    u, v = rng.standard_normal(d), rng.standard_normal(n)
    H = np.outer(u, v)
    expected = math.sqrt(1 - 1 / n)
    assert M.orthogonality_gap(H) == pytest.approx(expected, rel=1e-13)
    assert M.orthogonality_gap_gram(H.T @ H) == pytest.approx(expected, rel=1e-13)


def test_orthogonality_gap_matches_definition_and_gram_version():
    rng = np.random.default_rng(5)
    H = rng.standard_normal((3, 20, 6))
    for h in H:
        expected = np.linalg.norm(h.T @ h / np.linalg.norm(h) ** 2 - np.eye(6) / 6)
        assert M.orthogonality_gap(h) == pytest.approx(expected, rel=1e-12)
    v = M.orthogonality_gap(H)
    assert v.shape == (3,)
    np.testing.assert_allclose(M.orthogonality_gap_gram(np.swapaxes(H, -1, -2) @ H), v, rtol=1e-12)
    # no overflow for huge entries
    assert M.orthogonality_gap(H[0] * 1e200) == pytest.approx(v[0], rel=1e-12)


def test_orthogonality_gap_bad_input():
    with pytest.raises(ValueError, match="H must be"):
        M.orthogonality_gap(np.ones(3))
    with pytest.raises(ValueError, match="H has zero norm"):
        M.orthogonality_gap(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="H must be finite"):
        M.orthogonality_gap(np.array([[1.0, np.nan], [0.0, 1.0]]))


# ---------------------------------------------------------------------------------------------------------
# stacks
# ---------------------------------------------------------------------------------------------------------


def test_stacks_give_the_right_shapes_and_values():
    rng = np.random.default_rng(6)
    n = 4
    Ks = np.stack([np.stack([random_gram(rng, n) for _ in range(3)]) for _ in range(2)])  # (2, 3, n, n)
    assert Ks.shape == (2, 3, n, n)
    for f in (
        M.isometry,
        M.isometry_gap,
        M.potential,
        M.mean_correlation,
        M.am_gm_ratio,
        M.orthogonality_gap_gram,
    ):
        out = f(Ks)
        assert isinstance(out, np.ndarray) and out.shape == (2, 3), f.__name__
        for i in range(2):
            for j in range(3):
                assert out[i, j] == pytest.approx(f(Ks[i, j]), rel=1e-13), f.__name__
    assert M.correlations(Ks).shape == Ks.shape
    assert M.check_gram(Ks).shape == Ks.shape
    # an empty stack is fine
    assert M.isometry(np.zeros((0, n, n))).shape == (0,)


def test_stack_errors_name_the_offending_matrix():
    Ks = np.stack([np.eye(3)] * 4).reshape(2, 2, 3, 3).copy()
    Ks[1, 0, 2, 2] = -1.0
    with pytest.raises(ValueError, match=r"K\[1, 0\] must be positive semi-definite"):
        M.isometry(Ks)
    Ks[1, 0] = 0.0
    with pytest.raises(ValueError, match=r"K\[1, 0\] has trace 0"):
        M.isometry(Ks)


# ---------------------------------------------------------------------------------------------------------
# check_gram and bad inputs
# ---------------------------------------------------------------------------------------------------------


def test_check_gram_returns_exactly_symmetric_float64_copy():
    K = np.array([[2, 1], [1, 2]])  # integers
    out = M.check_gram(K)
    assert out.dtype == np.float64 and np.array_equal(out, K)
    rng = np.random.default_rng(7)
    X = rng.standard_normal((5, 9))
    K = X @ X.T
    K[0, 1] += 1e-15 * abs(K).max()
    out = M.check_gram(K)
    assert np.array_equal(out, out.T)
    assert out is not K
    assert M.check_gram([[1.0]]).shape == (1, 1)


@pytest.mark.parametrize(
    "K,fragment",
    [
        (np.ones(3), r"K must be an n x n Gram matrix.*shape \(3,\).*1-D"),
        (np.float64(2.0), r"K must be .*shape \(\).*0-D"),
        (np.ones((2, 3)), r"K must be square.*\(2, 3\)"),
        (np.zeros((0, 0)), r"K must hold at least one sample"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), r"K must be finite.*nan"),
        (np.array([[1.0, 0.0], [0.0, np.inf]]), r"K must be finite.*inf"),
        (np.array([[1.0, 0.5], [0.4, 1.0]]), r"K must be symmetric.*0\.1"),
        (np.array([[1.0, 2.0], [2.0, 1.0]]), r"K must be positive semi-definite.*-1"),
        (np.diag([1.0, -1e-6]), r"K must be positive semi-definite.*-1e-06"),
        (np.array([[1 + 1j, 0], [0, 1]]), r"K must be .*real.*complex"),
        (np.array([["a"]]), r"K must be .*real"),
        ([[1.0, 0.0], [0.0]], r"K must be .*could not convert"),
    ],
)
def test_bad_inputs_rejected_with_clear_message(K, fragment):
    for f in (
        M.check_gram,
        M.isometry,
        M.isometry_gap,
        M.potential,
        M.correlations,
        M.am_gm_ratio,
        M.orthogonality_gap_gram,
    ):
        with pytest.raises(ValueError, match=fragment):
            f(K)


def test_check_gram_options_and_name():
    with pytest.raises(ValueError, match=r"K0 must be symmetric"):
        M.check_gram(np.array([[1.0, 0.5], [0.4, 1.0]]), "K0")
    with pytest.raises(ValueError, match=r"K0 must be an n x n Gram matrix \(2-D\).*\(1, 2, 2\)"):
        M.check_gram(np.eye(2)[None], "K0", allow_stack=False)
    # psd tolerance: relative to max(1, lambda_max)
    M.check_gram(np.diag([1e6, -1e-5]))
    with pytest.raises(ValueError, match="positive semi-definite"):
        M.check_gram(np.diag([1e6, -1e-3]))
    M.check_gram(np.diag([1.0, -1e-3]), psd_tol=1e-2)
    with pytest.raises(ValueError, match="psd_tol"):
        M.check_gram(np.eye(2), psd_tol=-1.0)
    with pytest.raises(ValueError, match="sym_tol"):
        M.check_gram(np.eye(2), sym_tol=float("nan"))


def test_zero_matrix_has_no_isometry():
    for f, frag in ((M.isometry, "isometry"), (M.isometry_gap, "isometry gap")):
        with pytest.raises(ValueError, match=rf"K has trace 0.*no {frag}"):
            f(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="K has zero norm"):
        M.orthogonality_gap_gram(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="K .*all-zero diagonal"):
        M.am_gm_ratio(np.zeros((3, 3)))


def test_zero_variance_sample_rejected_by_potential():
    K = np.diag([1.0, 0.0, 2.0])
    for f in (M.potential, M.correlations, M.mean_correlation):
        with pytest.raises(ValueError, match=r"K\[1, 1\] = 0: sample 1 has zero variance"):
            f(K)
    Ks = np.stack([np.eye(3), K])
    with pytest.raises(ValueError, match=r"K\[1, 1, 1\] = 0: sample 1 has zero variance"):
        M.potential(Ks)


def test_mean_correlation_needs_two_samples():
    with pytest.raises(ValueError, match="n >= 2"):
        M.mean_correlation(np.eye(1))


def test_measures_at_the_ends_of_the_float64_range():
    """Scale-invariant measures stay exact near the float64 limits, without warnings (found in review: potential
    was NaN or inf for variances 1e200 and 1e-200 and for 1e308 K, isometry raised LinAlgError at 1e308 I)."""
    import warnings

    from meanfield import measures as M

    K = np.array([[1.0, 0.5], [0.5, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert M.potential(np.diag([1e200, 1e-200])) == 0.0
        assert M.potential(np.array([[1e200, 0.1], [0.1, 1e-200]])) == pytest.approx(0.1 / 0.9, rel=1e-15)
        assert M.potential(np.diag([1.0, 1e-300, 1.0])) == 0.0
        for c in (1e308, 1e-300, 1e-320):
            assert M.potential(c * K) == pytest.approx(1.0, rel=1e-14)
            assert M.isometry(c * K) == pytest.approx(M.isometry(K), rel=1e-14)
            assert M.isometry_gap(c * K) == pytest.approx(M.isometry_gap(K), rel=1e-14)
            assert M.isometry(c * np.eye(3)) == 1.0
        assert M.isometry(1.7e308 * np.ones((4, 4))) == 0.0  # singular, eigenvalue 6.8e308 beyond float64


@pytest.mark.parametrize("rcond", [1.0, 2.0, np.inf])
def test_rcond_of_one_or_more_is_refused(rcond):
    """At rcond >= 1 every eigenvalue counts as 0 and the isometry was 0/0 = NaN."""
    from meanfield import measures as M

    for f in (M.isometry, M.isometry_gap, M.potential):
        with pytest.raises(ValueError, match="rcond"):
            f(np.eye(3), rcond=rcond)
