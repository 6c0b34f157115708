"""Same-vocabulary token divergences and their registry (docs/methods.md#same-vocabulary-divergences).

Every divergence is a short formula on :class:`~kdviz.ops.Rows` (teacher ``logp``, student ``logq``,
log-softmax at temperature ``tau`` over the shared support) returning one value per token. The public
function of each, ``fkl(student_logits, teacher_logits, mask=None, *, tau=1.0, reduction="mean", ...)``,
adds the conventions shared by all:

- ``mask``: bool over the leading shape (``labels != -100``); masked tokens cost nothing and may hold
  anything (even NaN). ``reduction``: ``"mean"`` = ``sum(loss * mask) / max(count, 1)`` (or
  ``/ num_items`` under gradient accumulation), ``"sum"``, ``"none"`` (per token, 0 where masked).
- ``tau`` divides both sides; ``tau_squared=True`` multiplies the loss by ``tau**2`` (Hinton).
- Compute in float32 (float64 inputs stay float64); bf16/fp16 are upcast.
- ``-inf`` logits are legal. ``support="full"`` (default) computes the true divergence: each side is a
  distribution over its own finite entries, an entry ``-inf`` on one side only has probability 0 there
  (so a top-k teacher's zeros penalise the student's mass outside the teacher's support in ``fkl``), and
  a divergence that is infinite because it takes the log of such a zero (``rkl`` against a filtered
  teacher) raises ``ValueError`` rather than returning ``inf``. ``support="shared"`` removes every entry
  that is ``-inf`` on either side from both distributions and renormalises both over the rest (the
  convention of some KD codes for cached top-k teachers). Either way ``0 log 0 = 0`` exactly and
  gradients stay finite; huge finite logits (even ``+-3e38``, or ``1e36`` at ``tau=1e-3``) are exact
  up to rounding, never mistaken for padding.
- NaN or ``+inf`` on a valid token raises ``ValueError`` naming the tensor and index; two different
  vocabulary sizes raise ``ValueError`` naming both (``trim_vocab=True`` drops padded columns).
- An all-masked batch gives exactly 0 with zero gradients.

A new divergence is one formula, registered with :func:`register`::

    @register("hellinger", aliases=("hd",))
    def _hellinger(r: Rows, stats: dict, scale: float = 1.0) -> Out:
        '''Squared Hellinger distance: ``scale sum_v (sqrt(p) - sqrt(q))^2 / 2``.'''
        return scale * 0.5 * r.vsum((r.exp(0.5 * r.logp) - r.exp(0.5 * r.logq)) ** 2), None

Its keyword parameters (with defaults) become the divergence's own; its docstring, with the generated
signature and aliases, becomes the public function's (``DIVERGENCES["hellinger"].__doc__``) and a row of
the table in docs/methods.md#same-vocabulary-divergences (:func:`registry_markdown`). A formula that returns
``None`` as its gradient has no closed form: the chunked engine differentiates it with autograd chunk by
chunk. :meth:`Rows.exp` (:func:`kdviz.ops.masked_exp`) takes the exponential of a log-space term, 0
outside the support.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from kdviz.headtail import check_mu, head_weights
from kdviz.ops import (
    Rows,
    check_options,
    check_pair,
    check_support,
    check_values,
    chunked,
    gather_rows,
    make_rows,
    real_number,
    reduce,
    scatter_rows,
)

Formula = Callable[..., "Out"]
Out = tuple[torch.Tensor, "torch.Tensor | None"]
"""A formula's result: per-row values and, when ``rows.want_grad``, the closed-form gradient with respect
to the temperature-scaled student logits ``u = z / tau`` (None where a formula has none: the engine then
differentiates that chunk with autograd). From ``g = dL/d(log q)``: ``dL/du = g - q sum_v g``
(:meth:`Rows.through_softmax`); forward and reverse KL have shorter forms."""

DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {}
"""Registry: divergence name -> loss function ``(student_logits, teacher_logits, mask=None, **kw)``; each
function's ``formula`` attribute is the registered formula."""

ALIASES: dict[str, str] = {}
"""Other accepted names -> the registered name."""

ENGINES = ("chunked", "plain")


def register(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[Formula], Formula]:
    """Decorator: register ``formula(rows, stats, **params) -> (values, gradient or None)`` as the divergence
    ``name`` (also reachable as each of ``aliases``); adds its public function to :data:`DIVERGENCES`."""

    def add(formula: Formula) -> Formula:
        for key in (name, *aliases):
            if key in DIVERGENCES or key in ALIASES:
                raise ValueError(f"the divergence name {key!r} is already registered")
        DIVERGENCES[name] = _public(name, formula, aliases)
        ALIASES.update(dict.fromkeys(aliases, name))
        return formula

    return add


def canonical_name(name: str, role: str | None = None) -> str:
    """The registered name of ``name`` (itself or one of its aliases), else a ``ValueError`` (naming the
    argument ``role`` when given)."""
    canonical = ALIASES.get(name, name)
    if canonical not in DIVERGENCES:
        what = f"unknown divergence {name!r}" if role is None else f"{role}={name!r} is not a known divergence"
        raise ValueError(f"{what}; valid names: {_known_names()}")
    return canonical


def _known_names() -> str:
    aliases = ", ".join(f"{alias} for {target}" for alias, target in ALIASES.items())
    return ", ".join(DIVERGENCES) + (f" (aliases: {aliases})" if aliases else "")


def _params_of(formula: Formula) -> dict[str, object]:
    return {
        name: p.default
        for name, p in inspect.signature(formula).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _signature(formula: Formula) -> inspect.Signature:
    """:func:`divergence`'s parameters without ``name`` and ``**params``, then the formula's own."""
    shared = [p.replace(annotation=p.empty) for p in list(inspect.signature(divergence).parameters.values())[1:-1]]
    own = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in _params_of(formula).items()]
    return inspect.Signature(shared + own)


def signature(name: str) -> str:
    """The call signature of the divergence ``name`` (or an alias), generated from :func:`divergence` and its
    formula."""
    name = canonical_name(name)
    return f"{name}{_signature(DIVERGENCES[name].formula)}"


def _summary(formula: Formula) -> str:
    """The first paragraph of a formula's docstring, on one line."""
    return " ".join(inspect.getdoc(formula).split("\n\n")[0].split())


def registry_markdown() -> str:
    """:func:`divergence`'s signature and the Markdown table of every registered divergence (name, aliases,
    formula, parameters): the generated part of docs/methods.md#same-vocabulary-divergences."""
    shared = inspect.signature(divergence)
    call = shared.replace(
        parameters=[p.replace(annotation=p.empty) for p in shared.parameters.values()],
        return_annotation=shared.empty,
    )
    lines = [
        f"`kdviz.divergence{call}`, or the functions `kdviz.divergences.fkl`, ... of the registry "
        "`kdviz.DIVERGENCES` (the same without `name`).",
        "",
        "| name | aliases | per token | params (default) |",
        "|---|---|---|---|",
    ]
    for name, loss in DIVERGENCES.items():
        aliases = ", ".join(f"`{a}`" for a, target in ALIASES.items() if target == name)
        params = ", ".join(f"{k}={v!r}" for k, v in _params_of(loss.formula).items())
        per_token = _summary(loss.formula).replace("``", "`").replace("||", "‖").replace("|", "\\|")
        lines.append(f"| `{name}` | {aliases} | {per_token} | {f'`{params}`' if params else ''} |")
    return "\n".join(lines)


def _public(name: str, formula: Formula, aliases: tuple[str, ...]) -> Callable[..., torch.Tensor]:
    def loss(student_logits, teacher_logits, mask=None, **kwargs):
        return divergence(name, student_logits, teacher_logits, mask, **kwargs)

    loss.__name__ = loss.__qualname__ = name
    loss.__signature__ = _signature(formula)
    loss.formula = formula
    also = f"; aliases: {', '.join(repr(a) for a in aliases)}" if aliases else ""
    loss.__doc__ = (
        f"{inspect.getdoc(formula)}\n\nSignature: ``{name}{loss.__signature__}``{also}. "
        "Conventions in :mod:`kdviz.divergences`."
    )
    return loss


def lookup(name: str, params: dict) -> Formula:
    """The formula registered as ``name`` (or an alias) after checking ``params`` against it."""
    formula = DIVERGENCES[canonical_name(name)].formula
    allowed = _params_of(formula)
    unknown = set(params) - set(allowed)
    if unknown:
        raise TypeError(
            f"divergence {name!r} got unknown parameter(s) {sorted(unknown)}; "
            f"its parameters are {sorted(allowed) or 'none'}"
        )
    return formula


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
    support: str = "full",
    **params,
) -> torch.Tensor:
    """The divergence ``name`` between ``p = softmax(teacher / tau)`` and ``q = softmax(student / tau)``.

    ``student_logits`` and ``teacher_logits`` are ``[..., V]`` (typically ``[B, T, V]``). ``params``
    are the divergence's own (see ``DIVERGENCES[name].__doc__``); ``name`` may be an alias (:data:`ALIASES`).
    ``stats``, if a dict, receives counters such as ``"tokens"`` and ``"akl_fallbacks"``. ``support``:
    ``"full"`` (the true divergence) or ``"shared"`` (both sides renormalised over the entries finite on
    both); the conventions are in the module docstring.

    ``engine="chunked"`` (default, :mod:`kdviz.ops.engine`) walks the tokens in chunks of ``chunk_rows``
    rows (chosen from V and the device when None) and keeps only the gradient and one chunk in memory; it treats the
    teacher as a constant, so a teacher that requires a gradient is routed to ``engine="plain"``, the
    straightforward autograd reference. The chunked engine's backward can run once (no
    ``retain_graph``) and is first order: ``create_graph=True`` through it raises (use the plain engine
    for double backward).
    """
    formula = lookup(name, params)
    tau = check_options(tau, reduction, num_items)
    check_support(support)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    student_logits, teacher_logits, mask = check_pair(student_logits, teacher_logits, mask, trim_vocab)
    stats = {} if stats is None else stats
    factor = tau**2 if tau_squared else 1.0
    if engine == "chunked" and not (teacher_logits.requires_grad and torch.is_grad_enabled()):
        return chunked(
            formula, student_logits, teacher_logits, mask, tau=tau, reduction=reduction, factor=factor,
            num_items=num_items, chunk_rows=chunk_rows, stats=stats, params=params, support=support,
        )
    s, t, positions = gather_rows(student_logits, teacher_logits, mask)
    values, _ = formula(make_rows(s, t, tau, support=support), stats, **params)
    check_values(values, s, t, positions)
    stats["tokens"] = stats.get("tokens", 0) + values.shape[0]
    return reduce(scatter_rows(values * factor, mask), mask, reduction, num_items)


# -- The formulas -------------------------------------------------------------------------------------


def _weighted(w, x: torch.Tensor, out: torch.Tensor | None = None):
    """``w * x`` (``w``: a float or per-row ``[N]`` tensor; into ``out`` when given), exactly 0 where ``w`` is 0
    (even for an infinite ``x``)."""
    if not isinstance(w, torch.Tensor):
        return 0.0 if w == 0 else torch.mul(x, w, out=out)
    column = (-1, *[1] * (x.dim() - 1))
    product = torch.mul(x, w.view(column), out=out)
    return torch.where((w == 0).view(column), product.new_zeros(()), product, out=out)


def _mix(r: Rows, w1, a: Out, w2, b: Out) -> Out:
    """``w1 * a + w2 * b`` for values and gradients (weights: floats or per-row ``[N]`` tensors); a weight
    of 0 takes nothing from its side, even an infinite value. The gradients are the formulas' own
    temporaries: the chunked engine overwrites them."""
    value = _weighted(w1, a[0]) + _weighted(w2, b[0])
    if a[1] is None or b[1] is None:
        return value, None
    first, second = _weighted(w1, a[1], r.out(a[1])), _weighted(w2, b[1], r.out(b[1]))
    if isinstance(first, float) or isinstance(second, float):  # a weight of 0
        return value, first + second
    return value, torch.add(first, second, out=r.out(first))


def _infinite_where(r: Rows, out: Out, *, student_zero: bool = False, teacher_zero: bool = False) -> Out:
    """``+inf`` on the rows where the divergence is infinite because it takes ``log p`` where only the
    teacher's logit is ``-inf`` (``teacher_zero``), or ``log q`` where only the student's is
    (``student_zero``); only under ``support="full"``, and the engine turns it into a clear error."""
    bad = None
    for flag, where in ((teacher_zero, r.teacher_only), (student_zero, r.student_only)):
        if flag and where is not None:
            bad = where.any(-1) if bad is None else bad | where.any(-1)
    if bad is None:
        return out
    return torch.where(bad, math.inf, out[0]), out[1]


@register("fkl", aliases=("forward_kl",))
def _fkl(r: Rows, stats: dict) -> Out:
    """Forward KL: ``KL(p || q) = sum_v p (log p - log q)``."""
    log_ratio = torch.sub(r.logp, r.logq, out=r.out())
    value = r.vsum(torch.mul(r.p, log_ratio, out=r.out(log_ratio)))
    grad = torch.sub(r.q, r.p, out=r.out()) if r.want_grad else None
    return _infinite_where(r, (value, grad), student_zero=True)


@register("rkl", aliases=("reverse_kl",))
def _rkl(r: Rows, stats: dict) -> Out:
    """Reverse KL: ``KL(q || p) = sum_v q (log q - log p)``."""
    log_ratio = torch.sub(r.logq, r.logp, out=r.out())
    value = r.vsum(torch.mul(r.q, log_ratio, out=r.out()))
    grad = None
    if r.want_grad:
        centred = torch.sub(log_ratio, value[:, None], out=r.out(log_ratio))
        grad = torch.mul(r.q, centred, out=r.out(centred))
    return _infinite_where(r, (value, grad), teacher_zero=True)


def _unit_interval(name: str, value: float) -> float:
    value = real_number(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return value


def _log_mixture(r: Rows, weight_p: float) -> torch.Tensor:
    """``log(w p + (1 - w) q)``, formed in log space (never in probability space, which underflows)."""
    log_w = math.log(weight_p) if weight_p > 0 else -math.inf
    log_1mw = math.log1p(-weight_p) if weight_p < 1 else -math.inf
    weighted_p = torch.add(r.logp, log_w, out=r.out())
    return torch.logaddexp(weighted_p, torch.add(r.logq, log_1mw, out=r.out()), out=r.out(weighted_p))


@register("sym_kl")
def _sym_kl(r: Rows, stats: dict, lam: float = 0.5) -> Out:
    """Symmetric KL: ``(1 - lam) KL(p || q) + lam KL(q || p)``."""
    lam = _unit_interval("lam", lam)
    return _mix(r, 1.0 - lam, _fkl(r, stats), lam, _rkl(r, stats))


@register("js", aliases=("jsd",))
def _js(r: Rows, stats: dict) -> Out:
    """Jensen-Shannon: ``0.5 KL(p || m) + 0.5 KL(q || m)`` with ``m = (p + q) / 2``."""
    return _gjsd(r, stats, teacher_weight=0.5)


@register("gjsd")
def _gjsd(r: Rows, stats: dict, teacher_weight: float = 0.5) -> Out:
    """Generalised JSD: ``w KL(p || m) + (1 - w) KL(q || m)``, ``m = w p + (1 - w) q``, ``w = teacher_weight``.

    ``teacher_weight`` is GKD's ``beta`` (Agarwal et al.; TRL's ``generalized_jsd_loss``). The ends are
    special-cased as in GKD: ``teacher_weight=0`` is forward KL and ``teacher_weight=1`` reverse KL (the
    formula itself tends to 0 at both ends).
    """
    w = _unit_interval("teacher_weight", teacher_weight)
    if w == 0.0:
        return _fkl(r, stats)
    if w == 1.0:
        return _rkl(r, stats)
    log_m = _log_mixture(r, w)
    p_to_m = torch.sub(r.logp, log_m, out=r.out())
    q_to_m = torch.sub(r.logq, log_m, out=r.out(log_m))
    p_term = r.vsum(torch.mul(r.p, p_to_m, out=r.out(p_to_m)))
    value = w * p_term + (1.0 - w) * r.vsum(torch.mul(r.q, q_to_m, out=r.out()))
    if not r.want_grad:
        return value, None
    weighted_q = torch.mul(r.q, 1.0 - w, out=r.out(p_to_m))
    return value, r.through_softmax(torch.mul(weighted_q, q_to_m, out=r.out(weighted_q)))


@register("sfkl")
def _sfkl(r: Rows, stats: dict, a: float = 0.1) -> Out:
    """Skew forward KL: ``KL(p || a p + (1 - a) q)``."""
    a = _unit_interval("a", a)
    log_m = _log_mixture(r, a)
    p_to_m = torch.sub(r.logp, log_m, out=r.out())
    value = r.vsum(torch.mul(r.p, p_to_m, out=r.out(p_to_m)))
    grad = None
    if r.want_grad:  # dL/dlog q = -(1 - a) p q / m
        q_over_m = r.exp(torch.sub(r.logq, log_m, out=r.out(log_m)), overwrite=log_m)
        weighted = torch.mul(torch.mul(r.p, -(1.0 - a), out=r.out(p_to_m)), q_over_m, out=r.out(p_to_m))
        grad = r.through_softmax(weighted)
    return _infinite_where(r, (value, grad), student_zero=a == 0)


@register("srkl")
def _srkl(r: Rows, stats: dict, a: float = 0.1) -> Out:
    """Skew reverse KL: ``KL(q || (1 - a) p + a q)``."""
    a = _unit_interval("a", a)
    log_m = _log_mixture(r, 1.0 - a)
    q_to_m = torch.sub(r.logq, log_m, out=r.out(log_m))
    weighted = torch.mul(r.q, q_to_m, out=r.out())
    value = r.vsum(weighted)
    grad = None
    if r.want_grad:  # dL/dlog q = q (log(q / m) + 1 - a q / m)
        q_over_m = r.exp(q_to_m, overwrite=weighted)
        inner = torch.sub(torch.add(q_to_m, 1.0, out=r.out(q_to_m)), torch.mul(q_over_m, a, out=r.out(q_over_m)),
                          out=r.out(q_to_m))
        grad = r.through_softmax(torch.mul(r.q, inner, out=r.out(inner)))
    return _infinite_where(r, (value, grad), teacher_zero=a == 0)


@register("tvd")
def _tvd(r: Rows, stats: dict) -> Out:
    """Total variation distance: ``0.5 sum_v |p - q|``."""
    diff = torch.sub(r.q, r.p, out=r.out())
    value = 0.5 * r.vsum(torch.abs(diff, out=r.out()))
    if not r.want_grad:
        return value, None
    half_sign = torch.mul(torch.sign(diff, out=r.out(diff)), 0.5, out=r.out(diff))
    return value, r.through_softmax(torch.mul(half_sign, r.q, out=r.out(half_sign)))


@register("akl")
def _akl(r: Rows, stats: dict, mu: float = 0.5, crossing_in_head: bool = False, tail_mass: float | None = None) -> Out:
    """Adaptive KL: ``w_head KL(p || q) + (1 - w_head) KL(q || p)``, ``w_head = g_head / (g_head + g_tail)``.

    ``g_head = sum_{v in H} |p_v - q_v|`` over the teacher's head ``H`` (the top of ``p`` up to
    cumulative mass ``mu``, see :mod:`kdviz.headtail`), ``g_tail`` the same over the rest; the weights
    are detached. When ``g_head + g_tail < 1e-12`` both weights are 0.5; such tokens are counted in
    ``stats["akl_fallbacks"]`` when a ``stats`` dict is passed.

    ``tail_mass=alpha`` is the DSKD repository's ``adaptive_kl`` convention: the tail is the smallest
    probabilities whose ascending cumulative sum stays below ``alpha``, i.e. ``mu = 1 - alpha`` with
    ``crossing_in_head=True`` (leave ``mu`` and ``crossing_in_head`` at their defaults).
    """
    if tail_mass is not None:
        if mu != 0.5 or crossing_in_head:
            raise ValueError("pass either tail_mass (the DSKD convention) or mu/crossing_in_head, not both")
        tail_mass = real_number("tail_mass", tail_mass)
        if not 0.0 < tail_mass < 1.0:
            raise ValueError(f"tail_mass must be a number strictly between 0 and 1, got {tail_mass!r}")
        mu, crossing_in_head = 1.0 - tail_mass, True
    check_mu(mu)
    w_head, fallback = head_weights(r, mu, crossing_in_head)
    stats["akl_fallbacks"] = stats.get("akl_fallbacks", 0) + fallback.sum()
    return _mix(r, w_head, _fkl(r, stats), 1.0 - w_head, _rkl(r, stats))


_SERIES_TERMS = 12  # |delta| * max(1, |lam|) < 0.5: the remainder is below 1e-10 of the leading term


def _excess(delta: torch.Tensor, lam: float, x: torch.Tensor | None = None, y: torch.Tensor | None = None):
    """``v phi_lam(delta)``, ``phi_lam(delta) = sum_{n >= 2} (1 + lam + ... + lam^(n-2)) delta^n / n!``, without
    cancellation; ``v = 1``, or ``v = e^y`` with ``delta = x - y`` when ``x`` and ``y`` are given.

    In closed form ``phi_lam = (lam expm1(delta) - expm1(lam delta)) / (lam (1 - lam))``, with the limits
    ``expm1(delta) - delta`` at ``lam = 0`` and ``delta e^delta - expm1(delta)`` at ``lam = 1``. Each closed
    form loses the leading ``delta^2 / 2`` to cancellation for small ``delta``: there the series is summed.
    ``lam`` is at most 1/2 or exactly 1 (callers use the divergence's symmetry), so the closed form has no
    ``1 / (1 - lam)`` blow-up. For ``delta > 1`` the factor ``v`` is folded into the exponentials
    (``v e^delta = e^x``, ``v e^(lam delta) = e^(lam x + (1 - lam) y)``), so ``v = 0`` with a large ``delta``
    gives the exact finite value.
    """
    small = delta.abs() * max(1.0, abs(lam)) < 0.5
    d = torch.where(small, delta, 0.0)  # each branch gets inputs that keep it finite (for the gradient)
    series, power, coef, fact = torch.zeros_like(d), d * d, 1.0, 2.0
    for n in range(2, 2 + _SERIES_TERMS):
        series = series + (coef / fact) * power
        power, coef, fact = power * d, coef * lam + 1.0, fact * (n + 1)
    fold = torch.zeros_like(small) if y is None else ~small & (delta > 1)
    f = torch.where(small | fold, 1.0, delta)
    if lam == 0:
        closed = torch.expm1(f) - f
    elif lam == 1:
        closed = f * f.exp() - torch.expm1(f)
    else:
        closed = (lam * torch.expm1(f) - torch.expm1(lam * f)) / (lam * (1.0 - lam))
    if y is None:
        return torch.where(small, series, closed)
    v = y.exp()
    g = torch.where(fold, delta, 2.0)
    u = torch.where(fold, x, y + 2.0).exp()  # v e^g
    if lam == 1:
        folded = (g - 1.0) * u + v
    else:  # lam <= 1/2: v expm1(lam g) is folded only where lam g > 1 (expm1 keeps the digits of a tiny lam)
        lg = lam * g
        mixed = torch.where(fold, lam * x + (1.0 - lam) * y, y + 2.0).exp()
        second = torch.where(lg > 1, mixed - v, v * torch.expm1(lg.clamp(max=1.0)))
        folded = (lam * (u - v) - second) / (lam * (1.0 - lam))
    return torch.where(fold, folded, v * torch.where(small, series, closed))


def _abkd_terms(lp: torch.Tensor, lq: torch.Tensor, a: float, b: float) -> tuple[torch.Tensor, bool, bool]:
    """Per-entry alpha-beta divergence and whether a teacher / student zero makes it infinite.

    With ``s = a + b``, ``lam = a / s``, ``u = p^s``, ``v = q^s`` and ``delta = s (log p - log q)``, the
    entry ``-1/(ab) [p^a q^b - lam u - (1 - lam) v]`` is ``v phi_lam(delta) / s^2`` (:func:`_excess`),
    which keeps every digit when ``a`` or ``b`` is tiny (the direct form cancels to nothing in float32
    at ``a = b = 1e-6``). The symmetry ``(a, p) <-> (b, q)`` brings ``lam`` to at most 1/2. The limits
    ``b = 0`` (``v = q^a``, ``lam = 1``), ``a = 0`` (its mirror) and ``a + b = 0`` (``lam = 0``) use the
    same function.
    """
    if a == 0 and b == 0:
        return 0.5 * (lp - lq) ** 2, True, True
    if b == 0 or a == 0:  # b = 0: 1/a^2 [u log(u / v) - u + v], u = p^a, v = q^a; a = 0 by symmetry
        c, x, y = (a, lp, lq) if b == 0 else (b, lq, lp)
        x, y = c * x, c * y
        if c > 0:
            x, y = x.clamp(min=-1e4), y.clamp(min=-1e4)  # exp(-1e4) == 0: the same zero, no inf - inf
        return _excess(x - y, 1.0, x, y) / c**2, (a < 0) if b == 0 else True, True if b == 0 else (b < 0)
    s = a + b
    if s == 0:  # 1/a^2 [log(v / u) + u / v - 1], u = p^a, v = q^a
        return _excess(a * (lp - lq), 0.0) / a**2, True, True
    lam, x, y = a / s, lp, lq
    if lam > 0.5:
        lam, x, y = 1.0 - lam, lq, lp
    x, y = s * x, s * y
    if s > 0:
        x, y = x.clamp(min=-1e4), y.clamp(min=-1e4)
    return _excess(x - y, lam, x, y) / s**2, a < 0 or s < 0, b < 0 or s < 0


@register("abkd")
def _abkd(r: Rows, stats: dict, alpha: float = 0.2, beta: float = 0.7) -> Out:
    """Alpha-beta divergence: ``-1/(a b) sum_v [p^a q^b - a/(a+b) p^(a+b) - b/(a+b) q^(a+b)]``, ``a = alpha``,
    ``b = beta``, and its analytic limits at ``a = 0``, ``b = 0``, ``a + b = 0``, ``a = b = 0``.

    ``p`` is the teacher, ``q`` the student; ``alpha`` and ``beta`` are the exponents of Cichocki et al. 2011
    and ABKD (their names in both papers). The limits: ``b = 0``: ``1/a^2 sum [p^a log(p^a / q^a) - p^a + q^a]``;
    ``a = 0``: ``1/b^2 sum [q^b log(q^b / p^b) - q^b + p^b]``;
    ``a + b = 0``: ``1/a^2 sum [log(q^a / p^a) + p^a / q^a - 1]``;
    ``a = b = 0``: ``1/2 sum (log p - log q)^2``.
    ``(1, 0)`` is forward KL and ``(0, 1)`` reverse KL. Powers are taken in log space and each term is
    evaluated in a form without cancellation (exact to float32 rounding even at ``a = b = 1e-6``). It has no
    closed-form gradient here (the gradient it returns is None): the chunked engine differentiates it with
    autograd, chunk by chunk.
    """
    a, b = real_number("alpha", alpha), real_number("beta", beta)
    terms, teacher_zero, student_zero = _abkd_terms(r.logp, r.logq, a, b)
    return _infinite_where(r, (r.vsum(terms), None), teacher_zero=teacher_zero, student_zero=student_zero)


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
