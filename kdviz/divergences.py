"""Same-vocabulary token divergences (METHODS.md sections 0-2) and their registry.

Every divergence is a short formula on :class:`~kdviz._rows.Rows` (teacher ``logp``, student ``logq``,
log-softmax at temperature ``tau`` over the shared support) returning one value per token. The public
function of each, ``fkl(student_logits, teacher_logits, mask=None, *, tau=1.0, reduction="mean", ...)``,
adds the conventions shared by all:

- ``mask``: bool over the leading shape (``labels != -100``); masked tokens cost nothing and may hold
  anything (even NaN). ``reduction``: ``"mean"`` = ``sum(loss * mask) / max(count, 1)`` (or
  ``/ num_items`` under gradient accumulation), ``"sum"``, ``"none"`` (per token, 0 where masked).
- ``tau`` divides both sides; ``tau_squared=True`` multiplies the loss by ``tau**2`` (Hinton).
- Compute in float32 (float64 inputs stay float64); bf16/fp16 are upcast.
- ``-inf`` logits are legal: an entry that is ``-inf`` on either side is removed from both
  distributions before any arithmetic, so ``0 log 0 = 0`` exactly and gradients stay finite.
- NaN or ``+inf`` on a valid token raises ``ValueError`` naming the tensor and index; two different
  vocabulary sizes raise ``ValueError`` naming both (``trim_vocab=True`` drops padded columns).
- An all-masked batch gives exactly 0 with zero gradients.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from kdviz._chunked import chunked
from kdviz._rows import Rows, check_options, check_pair, gather_rows, make_rows, reduce, scatter_rows
from kdviz.headtail import check_mu, head_weights

Formula = Callable[..., "Out"]
Out = tuple[torch.Tensor, "torch.Tensor | None"]
"""A formula's result: per-row values and, when ``rows.want_grad``, the closed-form gradient with respect
to the temperature-scaled student logits ``u = z / tau`` (None where a formula has none: the engine then
differentiates that chunk with autograd). From ``g = dL/d(log q)``: ``dL/du = g - q sum_v g``
(:meth:`Rows.through_softmax`); forward and reverse KL have shorter forms."""


def _mix(w1, a: Out, w2, b: Out) -> Out:
    """``w1 * a + w2 * b`` for values and gradients (weights: floats or per-row ``[N]`` tensors)."""
    def col(w):
        return w[:, None] if isinstance(w, torch.Tensor) else w

    value = w1 * a[0] + w2 * b[0]
    grad = None if a[1] is None or b[1] is None else col(w1) * a[1] + col(w2) * b[1]
    return value, grad


def _fkl(r: Rows, stats: dict) -> Out:
    """Forward KL: ``KL(p || q) = sum_v p (log p - log q)``."""
    return r.vsum(r.p * (r.logp - r.logq)), (r.q - r.p if r.want_grad else None)


def _rkl(r: Rows, stats: dict) -> Out:
    """Reverse KL: ``KL(q || p) = sum_v q (log q - log p)``."""
    log_ratio = r.logq - r.logp
    value = r.vsum(r.q * log_ratio)
    return value, (r.q * (log_ratio - value[:, None]) if r.want_grad else None)


def _unit_interval(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _log_mixture(r: Rows, weight_p: float) -> torch.Tensor:
    """``log(w p + (1 - w) q)``, formed in log space (never in probability space, which underflows)."""
    log_w = math.log(weight_p) if weight_p > 0 else -math.inf
    log_1mw = math.log1p(-weight_p) if weight_p < 1 else -math.inf
    return torch.logaddexp(r.logp + log_w, r.logq + log_1mw)


def _sym_kl(r: Rows, stats: dict, lam: float = 0.5) -> Out:
    """Symmetric KL: ``(1 - lam) KL(p || q) + lam KL(q || p)``."""
    _unit_interval("lam", lam)
    return _mix(1.0 - lam, _fkl(r, stats), lam, _rkl(r, stats))


def _js(r: Rows, stats: dict) -> Out:
    """Jensen-Shannon: ``0.5 KL(p || m) + 0.5 KL(q || m)`` with ``m = (p + q) / 2``."""
    return _gjsd(r, stats, beta=0.5)


def _gjsd(r: Rows, stats: dict, beta: float = 0.5) -> Out:
    """Generalised JSD: ``beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``.

    The ends are special-cased as in GKD: ``beta=0`` is forward KL and ``beta=1`` reverse KL (the
    formula itself tends to 0 at both ends).
    """
    _unit_interval("beta", beta)
    if beta == 0.0:
        return _fkl(r, stats)
    if beta == 1.0:
        return _rkl(r, stats)
    log_m = _log_mixture(r, beta)
    q_to_m = r.logq - log_m
    value = beta * r.vsum(r.p * (r.logp - log_m)) + (1.0 - beta) * r.vsum(r.q * q_to_m)
    return value, (r.through_softmax((1.0 - beta) * r.q * q_to_m) if r.want_grad else None)


def _sfkl(r: Rows, stats: dict, a: float = 0.1) -> Out:
    """Skew forward KL: ``KL(p || a p + (1 - a) q)``."""
    _unit_interval("a", a)
    log_m = _log_mixture(r, a)
    value = r.vsum(r.p * (r.logp - log_m))
    return value, (r.through_softmax(-(1.0 - a) * r.p * (r.logq - log_m).exp()) if r.want_grad else None)


def _srkl(r: Rows, stats: dict, a: float = 0.1) -> Out:
    """Skew reverse KL: ``KL(q || (1 - a) p + a q)``."""
    _unit_interval("a", a)
    q_to_m = r.logq - _log_mixture(r, 1.0 - a)
    value = r.vsum(r.q * q_to_m)
    return value, (r.through_softmax(r.q * (q_to_m + 1.0 - a * q_to_m.exp())) if r.want_grad else None)


def _tvd(r: Rows, stats: dict) -> Out:
    """Total variation distance: ``0.5 sum_v |p - q|``."""
    diff = r.q - r.p
    return 0.5 * r.vsum(diff.abs()), (r.through_softmax(0.5 * diff.sign() * r.q) if r.want_grad else None)


def _akl(r: Rows, stats: dict, mu: float = 0.5, crossing_in_head: bool = False) -> Out:
    """Adaptive KL: ``w_head KL(p || q) + (1 - w_head) KL(q || p)``, ``w_head = g_head / (g_head + g_tail)``.

    ``g_head = sum_{v in H} |p_v - q_v|`` over the teacher's head ``H`` (the top of ``p`` up to
    cumulative mass ``mu``, see :mod:`kdviz.headtail`), ``g_tail`` the same over the rest; the weights
    are detached. When ``g_head + g_tail < 1e-12`` both weights are 0.5; such tokens are counted in
    ``stats["akl_fallbacks"]`` when a ``stats`` dict is passed.
    """
    check_mu(mu)
    w_head, fallback = head_weights(r, mu, crossing_in_head)
    stats["akl_fallbacks"] = stats.get("akl_fallbacks", 0) + fallback.sum()
    return _mix(w_head, _fkl(r, stats), 1.0 - w_head, _rkl(r, stats))


def _abkd(r: Rows, stats: dict, alpha: float = 0.2, beta: float = 0.7) -> Out:
    """Alpha-beta divergence (Cichocki et al. 2011; ABKD), ``p`` the teacher, ``q`` the student.

    ``-1/(a b) sum_v [p^a q^b - a/(a+b) p^(a+b) - b/(a+b) q^(a+b)]`` with ``a = alpha, b = beta``, and
    its analytic limits: ``b = 0``: ``1/a^2 sum [p^a log(p^a / q^a) - p^a + q^a]``;
    ``a = 0``: ``1/b^2 sum [q^b log(q^b / p^b) - q^b + p^b]``;
    ``a + b = 0``: ``1/a^2 sum [log(q^a / p^a) + p^a / q^a - 1]``;
    ``a = b = 0``: ``1/2 sum (log p - log q)^2``.
    ``(1, 0)`` is forward KL and ``(0, 1)`` reverse KL. Powers are taken in log space. The chunked engine
    differentiates it with autograd, chunk by chunk.
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    a, b, lp, lq = alpha, beta, r.logp, r.logq
    if a == 0 and b == 0:
        return 0.5 * r.vsum((lp - lq) ** 2), None
    if b == 0:
        pa = (a * lp).exp()
        return r.vsum(pa * a * (lp - lq) - pa + (a * lq).exp()) / a**2, None
    if a == 0:
        qb = (b * lq).exp()
        return r.vsum(qb * b * (lq - lp) - qb + (b * lp).exp()) / b**2, None
    if a + b == 0:
        return r.vsum(a * (lq - lp) + (a * (lp - lq)).exp() - 1.0) / a**2, None
    s = a + b
    term = (a * lp + b * lq).exp() - a / s * (s * lp).exp() - b / s * (s * lq).exp()
    return -r.vsum(term) / (a * b), None


_FORMULAS: dict[str, Formula] = {
    "fkl": _fkl,
    "rkl": _rkl,
    "sym_kl": _sym_kl,
    "js": _js,
    "gjsd": _gjsd,
    "sfkl": _sfkl,
    "srkl": _srkl,
    "tvd": _tvd,
    "akl": _akl,
    "abkd": _abkd,
}


_AUTOGRAD_ONLY = {"abkd"}  # no closed-form gradient: the chunked engine uses autograd per chunk
ENGINES = ("chunked", "plain")


def _params_of(formula: Formula) -> dict[str, object]:
    return {
        name: p.default
        for name, p in inspect.signature(formula).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def lookup(name: str, params: dict) -> tuple[Formula, bool]:
    """The formula registered as ``name`` after checking ``params`` against it, and whether it has a
    closed-form gradient (else the chunked engine differentiates it with autograd)."""
    if name not in _FORMULAS:
        raise ValueError(f"unknown divergence {name!r}; valid names: {', '.join(_FORMULAS)}")
    formula = _FORMULAS[name]
    allowed = _params_of(formula)
    unknown = set(params) - set(allowed)
    if unknown:
        raise TypeError(
            f"divergence {name!r} got unknown parameter(s) {sorted(unknown)}; "
            f"its parameters are {sorted(allowed) or 'none'}"
        )
    return formula, name not in _AUTOGRAD_ONLY


def divergence(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    tau: float = 1.0,
    reduction: str = "mean",
    tau_squared: bool = False,
    num_items: int | float | torch.Tensor | None = None,
    trim_vocab: bool | int | None = None,
    stats: dict | None = None,
    engine: str = "chunked",
    chunk_rows: int | None = None,
    **params,
) -> torch.Tensor:
    """The divergence ``name`` between ``p = softmax(teacher / tau)`` and ``q = softmax(student / tau)``.

    ``student_logits`` and ``teacher_logits`` are ``[..., V]`` (typically ``[B, T, V]``). ``params``
    are the divergence's own (see ``DIVERGENCES[name].__doc__``). ``stats``, if a dict, receives
    counters such as ``"tokens"`` and ``"akl_fallbacks"``. The conventions are in the module docstring.

    ``engine="chunked"`` (default, :mod:`kdviz._chunked`) walks the tokens in chunks of ``chunk_rows``
    rows (chosen from V when None) and keeps only the gradient and one chunk in memory; it treats the
    teacher as a constant, so a teacher that requires a gradient is routed to ``engine="plain"``, the
    straightforward autograd reference. The chunked engine's backward can run once (no
    ``retain_graph`` / double backward: use the plain engine for those).
    """
    formula, closed_form = lookup(name, params)
    check_options(tau, reduction, num_items)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    student_logits, teacher_logits, mask = check_pair(student_logits, teacher_logits, mask, trim_vocab)
    stats = {} if stats is None else stats
    factor = tau**2 if tau_squared else 1.0
    if engine == "chunked" and not (teacher_logits.requires_grad and torch.is_grad_enabled()):
        return chunked(
            formula, student_logits, teacher_logits, mask, tau=tau, reduction=reduction, factor=factor,
            num_items=num_items, chunk_rows=chunk_rows, stats=stats, params=params,
            closed_form=closed_form,
        )
    s, t, _ = gather_rows(student_logits, teacher_logits, mask)
    values, _ = formula(make_rows(s, t, tau), stats, **params)
    stats["tokens"] = stats.get("tokens", 0) + values.shape[0]
    return reduce(scatter_rows(values * factor, mask), mask, reduction, num_items)


def _public(name: str, formula: Formula) -> Callable[..., torch.Tensor]:
    def loss(student_logits, teacher_logits, mask=None, **kwargs):
        return divergence(name, student_logits, teacher_logits, mask, **kwargs)

    params = ", ".join(f"{k}={v!r}" for k, v in _params_of(formula).items())
    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = (
        f"{formula.__doc__}\n\n"
        f"Signature: ``{name}(student_logits, teacher_logits, mask=None, *, tau=1.0, reduction='mean', "
        f"tau_squared=False, num_items=None, trim_vocab=None, stats=None, engine='chunked', chunk_rows=None"
        f"{', ' + params if params else ''})``; "
        "conventions in :mod:`kdviz.divergences`."
    )
    return loss


DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {n: _public(n, f) for n, f in _FORMULAS.items()}
"""Registry: divergence name -> loss function ``(student_logits, teacher_logits, mask=None, **kw)``."""

fkl = DIVERGENCES["fkl"]
rkl = DIVERGENCES["rkl"]
sym_kl = DIVERGENCES["sym_kl"]
js = DIVERGENCES["js"]
gjsd = DIVERGENCES["gjsd"]
sfkl = DIVERGENCES["sfkl"]
srkl = DIVERGENCES["srkl"]
tvd = DIVERGENCES["tvd"]
akl = DIVERGENCES["akl"]
abkd = DIVERGENCES["abkd"]
