"""Independent float64 references for the divergences, written from docs/methods.md in NumPy/SciPy.

Nothing here calls kdviz. Probabilities are formed in probability space in float64 and the
``x log(x / y)`` terms use ``scipy.special.rel_entr`` (which defines ``0 log 0 = 0``).
"""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr


def distributions(student: np.ndarray, teacher: np.ndarray, tau: float, support: str = "shared"):
    """``(p, q)`` in float64, rows ``[N, V]``: each side over its own finite entries (``support="full"``,
    the true distributions) or both over the entries finite on both sides (``"shared"``)."""
    s = np.asarray(student, dtype=np.float64) / tau
    t = np.asarray(teacher, dtype=np.float64) / tau
    both = np.isfinite(s) & np.isfinite(t)

    def softmax(z):
        keep = both if support == "shared" else np.isfinite(z)
        z = np.where(keep, z, -np.inf)
        z = z - z.max(-1, keepdims=True)
        e = np.where(keep, np.exp(z), 0.0)
        return e / e.sum(-1, keepdims=True)

    return softmax(t), softmax(s)


def kl_logspace(student: np.ndarray, teacher: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(FKL, RKL)`` per row from float64 log-softmax, for logits so wide that probabilities underflow."""

    def log_softmax(z):
        z = np.asarray(z, dtype=np.float64)
        m = z.max(-1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))

    lq, lp = log_softmax(student), log_softmax(teacher)
    return (np.exp(lp) * (lp - lq)).sum(-1), (np.exp(lq) * (lq - lp)).sum(-1)


def kl(x, y):
    return rel_entr(x, y).sum(-1)


def head_sets(p: np.ndarray, mu: float, crossing_in_head: bool = False) -> np.ndarray:
    """Boolean ``[N, V]`` head membership by a full stable sort (ties: lower id first)."""
    head = np.zeros(p.shape, dtype=bool)
    for i, row in enumerate(p):
        order = np.argsort(-row, kind="stable")
        c = np.cumsum(row[order])
        size = max(1, int((c <= mu).sum()))
        if crossing_in_head and (c <= mu).sum() >= 1:
            size = min(len(row), size + 1)
        head[i, order[:size]] = True
    return head


def akl_weights(p, q, mu, crossing_in_head=False):
    head = head_sets(p, mu, crossing_in_head)
    gap = np.abs(p - q)
    g_head = (gap * head).sum(-1)
    g_all = gap.sum(-1)
    fallback = g_all < 1e-12
    return np.where(fallback, 0.5, g_head / np.where(fallback, 1.0, g_all)), fallback


def abkd(p, q, alpha, beta):
    a, b = alpha, beta
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        support = (p > 0) | (q > 0)
        if a == 0 and b == 0:
            return np.where(support, 0.5 * (np.log(p) - np.log(q)) ** 2, 0.0).sum(-1)
        if b == 0:
            pa, qa = np.power(p, a), np.power(q, a)
            return np.where(support, rel_entr(pa, qa) - pa + qa, 0.0).sum(-1) / a**2
        if a == 0:
            pb, qb = np.power(p, b), np.power(q, b)
            return np.where(support, rel_entr(qb, pb) - qb + pb, 0.0).sum(-1) / b**2
        if a + b == 0:
            r = np.power(q, a) / np.power(p, a)
            return np.where(support, np.log(r) + 1.0 / r - 1.0, 0.0).sum(-1) / a**2
        s = a + b
        t = np.power(p, a) * np.power(q, b) - a / s * np.power(p, s) - b / s * np.power(q, s)
        return -np.where(support, t, 0.0).sum(-1) / (a * b)


def weighted(w, x):
    """``w * x`` with ``0 * inf = 0`` (a zero weight takes nothing from an infinite term)."""
    return np.where(w == 0, 0.0, w * x)


def divergence(name: str, student, teacher, tau: float = 1.0, support: str = "full", **params) -> np.ndarray:
    """Per-row float64 value of divergence ``name``; rows ``[N, V]`` (``inf`` where it is infinite)."""
    p, q = distributions(student, teacher, tau, support)
    if name == "fkl":
        return kl(p, q)
    if name == "rkl":
        return kl(q, p)
    if name == "sym_kl":
        lam = params.get("lam", 0.5)
        return weighted(1 - lam, kl(p, q)) + weighted(lam, kl(q, p))
    if name in ("js", "gjsd"):
        beta = 0.5 if name == "js" else params.get("teacher_weight", 0.5)
        if beta == 0:
            return kl(p, q)
        if beta == 1:
            return kl(q, p)
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if name == "sfkl":
        a = params.get("a", 0.1)
        return kl(p, a * p + (1 - a) * q)
    if name == "srkl":
        a = params.get("a", 0.1)
        return kl(q, (1 - a) * p + a * q)
    if name == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    if name == "akl":
        w, _ = akl_weights(p, q, params.get("mu", 0.5), params.get("crossing_in_head", False))
        return weighted(w, kl(p, q)) + weighted(1 - w, kl(q, p))
    if name == "abkd":
        return abkd(p, q, params.get("alpha", 0.2), params.get("beta", 0.7))
    raise KeyError(name)
