r"""The expected batch dual for independent Gaussian scores, by one-dimensional quadrature.

Scores ``gamma_ik = m_k + Z_ik`` with ``Z`` i.i.d. standard normal, ``T`` tokens a batch,
``K = 1`` (``TopKSum = max``) or ``K = E - 1`` (``TopKSum = sum - min``). With
``mu_k = m_k + p_k`` and ``Phi``/``phi`` the standard normal cdf/pdf,

.. math::

    E \max_k (\mu_k + Z_k) = a + \int_a^\infty \Big(1 - \prod_k \Phi(x - \mu_k)\Big) dx,
    \qquad
    \partial_k = \int \phi(x - \mu_k) \prod_{j \ne k} \Phi(x - \mu_j)\, dx,

    \partial_k \partial_l = -\int \phi(x - \mu_k)\phi(x - \mu_l)
    \prod_{j \ne k,l} \Phi(x - \mu_j)\, dx \quad (k \ne l),

and the diagonal makes every row sum to 0 (shift invariance). ``F(p) = T E[TopKSum] - c.p``.
This is exact up to quadrature error (< 1e-9 here), independent of any sampling, and
independent of ``alflb`` (only scipy's ``ndtr``): the reference the library's Monte
Carlo dual is compared with.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

_SQ2PI = np.sqrt(2 * np.pi)


def _grid(mu: np.ndarray, n: int = 401) -> np.ndarray:
    lo, hi = float(np.min(mu)) - 9.0, float(np.max(mu)) + 9.0
    return np.linspace(lo, hi, n)


def _trap(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.trapezoid(y, x, axis=-1)


def expected_max(mu_BE: np.ndarray) -> np.ndarray:
    """``E max_k (mu_k + Z_k)`` for each row of ``mu_BE`` (shape (B, E) -> (B,))."""
    mu_BE = np.atleast_2d(mu_BE)
    x = _grid(mu_BE)
    out = np.empty(len(mu_BE))
    for s in range(0, len(mu_BE), 512):
        cdf = ndtr(x[None, :, None] - mu_BE[s : s + 512, None, :]).prod(axis=-1)  # (b, X)
        out[s : s + 512] = x[0] + _trap(1.0 - cdf, x)
    return out


def _signed_mu(mean_E, bias_BE, k: int) -> tuple[np.ndarray, float]:
    n_experts = len(mean_E)
    mu = np.asarray(mean_E, dtype=np.float64) + np.atleast_2d(bias_BE)
    if k == 1:
        return mu, 1.0
    if k == n_experts - 1:
        return -mu, -1.0
    raise ValueError(f"quadrature covers K = 1 and K = E - 1 only, got K = {k}, E = {n_experts}")


def expected_dual(mean_E, bias_BE, k: int, n_tokens: int, capacity_E) -> np.ndarray:
    """``F(p) = T E[TopKSum(gamma + p)] - c.p`` for each row ``p`` of ``bias_BE``."""
    mu, sign = _signed_mu(mean_E, bias_BE, k)
    cap = np.asarray(capacity_E, dtype=np.float64)
    bias = np.atleast_2d(bias_BE)
    if sign > 0:
        top = expected_max(mu)
    else:  # sum - min, and min(x) = -max(-x)
        top = (-mu).sum(axis=1) + expected_max(mu)
    return n_tokens * top - bias @ cap


def hessian(mean_E, bias_E, k: int, n_tokens: int) -> np.ndarray:
    """The exact Hessian of ``F`` at ``p`` (E, E); rows sum to 0."""
    mu, _ = _signed_mu(mean_E, bias_E, k)
    mu = mu[0]
    x = _grid(mu, 4001)
    z = x[:, None] - mu[None, :]
    cdf, pdf = ndtr(z), np.exp(-0.5 * z**2) / _SQ2PI
    n_experts = len(mu)
    hess = np.zeros((n_experts, n_experts))
    for a in range(n_experts):
        for b in range(a + 1, n_experts):
            others = np.prod(np.delete(cdf, [a, b], axis=1), axis=1)
            hess[a, b] = hess[b, a] = -_trap(pdf[:, a] * pdf[:, b] * others, x)
    hess[np.diag_indices(n_experts)] = -hess.sum(axis=1)
    # K = E - 1 works on -mu: two sign flips leave the second derivative unchanged.
    return n_tokens * hess


def gradient(mean_E, bias_E, k: int, n_tokens: int, capacity_E) -> np.ndarray:
    """``grad F(p) = T P(k selected) - c`` (E,)."""
    mu, sign = _signed_mu(mean_E, bias_E, k)
    mu = mu[0]
    x = _grid(mu, 4001)
    z = x[:, None] - mu[None, :]
    cdf, pdf = ndtr(z), np.exp(-0.5 * z**2) / _SQ2PI
    n_experts = len(mu)
    prob = np.array([_trap(pdf[:, a] * np.prod(np.delete(cdf, a, axis=1), axis=1), x)
                     for a in range(n_experts)])  # fmt: skip
    if sign < 0:  # selected = not the minimum
        prob = 1.0 - prob
    return n_tokens * prob - np.asarray(capacity_E, dtype=np.float64)


def minimiser(mean_E, k: int, n_tokens: int, capacity_E, tol: float = 1e-12) -> np.ndarray:
    """``p* = argmin F`` with ``sum p* = 0`` (Newton on ``1``-perp)."""
    n_experts = len(mean_E)
    p = np.zeros(n_experts)
    proj = np.eye(n_experts) - 1.0 / n_experts
    for _ in range(100):
        g = gradient(mean_E, p, k, n_tokens, capacity_E)
        h = hessian(mean_E, p, k, n_tokens) + np.ones((n_experts, n_experts)) / n_experts
        step = np.linalg.solve(h, proj @ g)
        p = p - step
        if np.abs(step).max() < tol:
            break
    return p - p.mean()


def lambda_perp(hess: np.ndarray) -> float:
    """Smallest eigenvalue of a symmetric matrix on ``1``-perp."""
    n = hess.shape[0]
    basis = np.linalg.qr(np.c_[np.ones(n), np.eye(n)[:, : n - 1]])[0][:, 1:]
    return float(np.linalg.eigvalsh(basis.T @ ((hess + hess.T) / 2) @ basis).min())


def modulus_along_path(mean_E, k: int, n_tokens: int, p_star_E, n_points: int = 11) -> np.ndarray:
    """``lambda_2`` of the Hessian at ``t p*`` for ``t`` in ``linspace(0, 1, n_points)``."""
    return np.array([lambda_perp(hessian(mean_E, t * np.asarray(p_star_E), k, n_tokens))
                     for t in np.linspace(0, 1, n_points)])  # fmt: skip
