"""Fused LM head + divergence + cross-entropy: a same-vocabulary KD loss without the full student logits.

``fused_divergence`` takes the student's last hidden states and LM-head weight instead of its logits.
The valid tokens are walked in chunks: each chunk is projected to logits, the divergence and the
cross-entropy on the labels are evaluated with their gradients with respect to those logits (the
engine of :mod:`kdviz.ops.engine`, the cross-entropy of :mod:`kdviz.ops.reductions`), and the gradients
are pushed at once into the hidden states and the head weight. No ``[tokens, V]`` tensor ever exists
beyond one chunk.

Total: ``ce_weight * CE + kd_weight * KD``, both token means over the same valid tokens (or sums), with
``CE = logsumexp(z) - z[label]`` at temperature 1 and ``KD`` the divergence at ``tau``.
"""

from __future__ import annotations

import torch

from kdviz.divergences import lookup
from kdviz.ops import (
    IGNORE,
    check_options,
    check_support,
    chunk_cross_entropy,
    chunk_value_and_grad,
    compute_dtype,
    first_order_only,
    has_closed_form,
    real_number,
    rows_per_chunk,
)

# CPU bytes of one [rows, V] chunk of logits: enough rows for the four matrix products per chunk to run near the
# CPU's speed, a fraction of a plain [tokens, V] computation's memory (benchmarks/README.md)
FUSED_CPU_CHUNK_BYTES = 128 * 2**20


def _project(hidden: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (hidden @ weight.T).to(dtype)


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, teacher, labels, positions, cfg):
        need_h, need_w = cfg["need_grad"]
        index = tuple(positions.T)
        dtype = compute_dtype(hidden.dtype)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        kd_total = torch.zeros((), dtype=dtype, device=hidden.device)
        ce_total = torch.zeros((), dtype=dtype, device=hidden.device)
        grad_mode = "closed" if cfg["closed_form"] else "autograd"
        rows_per_chunk = cfg["chunk_rows"]
        for start in range(0, positions.shape[0], rows_per_chunk):
            rows = tuple(i[start : start + rows_per_chunk] for i in index)
            h = hidden[rows]
            z = _project(h, weight, dtype)
            kd, dz_kd = chunk_value_and_grad(
                cfg["formula"], z, teacher(rows), cfg["tau"], cfg["stats"], cfg["params"],
                positions[start : start + rows_per_chunk], grad_mode if (need_h or need_w) else None,
                support=cfg["support"],
            )
            ce, dz = chunk_cross_entropy(z, labels[rows], need_h or need_w)
            kd_total += kd.sum()
            ce_total += ce.sum()
            if dz is not None:  # dCE/dz = softmax(z) - onehot(label), then the KD gradient added in place
                dz.mul_(cfg["ce_weight"]).add_(dz_kd, alpha=cfg["kd_weight"] * cfg["factor"]).mul_(cfg["scale"])
                if need_h:
                    grad_h[rows] = (dz.to(weight.dtype) @ weight).to(grad_h.dtype)
                if need_w:
                    grad_w.addmm_(dz.T, h.to(dtype))
        ctx.grads = (grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        kd_mean = kd_total * cfg["factor"] * cfg["scale"]
        ce_mean = ce_total * cfg["scale"]
        cfg["stats"].update(kd=kd_mean.detach(), ce=ce_mean.detach())
        cfg["stats"]["tokens"] = cfg["stats"].get("tokens", 0) + positions.shape[0]
        return cfg["ce_weight"] * ce_mean + cfg["kd_weight"] * kd_mean

    @staticmethod
    def backward(ctx, grad_out):
        first_order_only("fused_divergence", "compute the logits and use kdviz.divergences with engine='plain'")
        if ctx.grads is None:
            raise RuntimeError("backward through fused_divergence ran twice (retain_graph): not supported")
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        if not bool(grad_out == 1):
            for g in (grad_h, grad_w):
                if g is not None:
                    g.mul_(grad_out.to(g.dtype))
        return grad_h, grad_w, None, None, None, None


def _check_matrix(name: str, weight: torch.Tensor, hidden_name: str, hidden: torch.Tensor) -> None:
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"{name} must be [V, d] with d = {hidden_name}.shape[-1] = {hidden.shape[-1]}, got {tuple(weight.shape)}"
        )


def fused_divergence(
    name: str,
    student_hidden: torch.Tensor,
    student_head_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head_weight: torch.Tensor | None = None,
    ce_weight: float = 0.5,
    kd_weight: float = 0.5,
    tau: float = 1.0,
    tau_squared: bool = False,
    reduction: str = "mean",
    num_items: int | float | torch.Tensor | None = None,
    chunk_rows: int | None = None,
    stats: dict | None = None,
    support: str = "full",
    **params,
) -> torch.Tensor:
    """``ce_weight * CE + kd_weight * D(teacher || student)`` from hidden states, never materialising logits.

    - ``student_hidden`` ``[..., d]``: the student's last hidden states (what its LM head consumes);
      ``student_head_weight`` ``[V, d]`` (no bias: GPT-2, Llama, Qwen heads have none).
    - ``labels`` ``[...]``: the target of each position, **already shifted** (``labels[..., t]`` is the
      token position ``t`` predicts), ``-100`` where nothing is trained; the loss mask is ``labels != -100``.
    - The teacher: ``teacher_logits`` ``[..., V]``, or ``teacher_hidden`` ``[..., d_t]`` with
      ``teacher_head_weight`` ``[V, d_t]`` (projected chunk by chunk, without gradient).
    - ``name`` and ``params``: any divergence of :data:`kdviz.DIVERGENCES` at temperature ``tau``
      (``tau_squared`` scales the KD term by ``tau**2``; ``support`` as in :func:`kdviz.divergence`); CE
      is at temperature 1.
    - ``reduction``: ``"mean"`` over valid tokens (or ``/ num_items``) or ``"sum"``.
    - ``stats``: if a dict, receives the detached ``"ce"`` and ``"kd"`` terms, ``"tokens"`` and the
      divergence's counters.

    Gradients flow to ``student_hidden`` and ``student_head_weight``; the teacher is a constant. The
    backward is first order (``create_graph=True`` raises).
    """
    formula = lookup(name, params)
    tau = check_options(tau, reduction, num_items, reductions=("mean", "sum"))
    check_support(support)
    ce_weight, kd_weight = (real_number(n, w) for n, w in (("ce_weight", ce_weight), ("kd_weight", kd_weight)))
    _check_matrix("student_head_weight", student_head_weight, "student_hidden", student_hidden)
    lead = student_hidden.shape[:-1]
    if labels.shape != lead:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}, expected student_hidden's leading shape {tuple(lead)}"
        )
    vocab = student_head_weight.shape[0]
    if teacher_logits is not None:
        if teacher_hidden is not None or teacher_head_weight is not None:
            raise ValueError("pass either teacher_logits or teacher_hidden + teacher_head_weight, not both")
        if teacher_logits.shape != (*lead, vocab):
            raise ValueError(
                f"teacher_logits has shape {tuple(teacher_logits.shape)}, expected {(*lead, vocab)} "
                f"(student_hidden's leading shape and the student head's V={vocab})"
            )
        t_logits = teacher_logits.detach()

        def teacher(rows):
            return t_logits[rows]
    elif teacher_hidden is not None and teacher_head_weight is not None:
        _check_matrix("teacher_head_weight", teacher_head_weight, "teacher_hidden", teacher_hidden)
        if teacher_head_weight.shape[0] != vocab:
            raise ValueError(
                f"vocabulary sizes differ: student head V={vocab}, teacher head V={teacher_head_weight.shape[0]}"
            )
        if teacher_hidden.shape[:-1] != lead:
            raise ValueError(
                f"teacher_hidden has leading shape {tuple(teacher_hidden.shape[:-1])}, expected {tuple(lead)}"
            )
        t_hidden, t_weight = teacher_hidden.detach(), teacher_head_weight.detach()

        def teacher(rows):
            return _project(t_hidden[rows], t_weight, compute_dtype(t_hidden.dtype))
    else:
        raise ValueError("a teacher is needed: teacher_logits, or teacher_hidden with teacher_head_weight")
    mask = labels != IGNORE
    valid_labels = labels[mask]
    if valid_labels.numel() and (valid_labels.min() < 0 or valid_labels.max() >= vocab):
        raise ValueError(f"labels must be -100 or token ids in [0, {vocab}), got values outside that range")
    positions = mask.nonzero()
    count = num_items if num_items is not None else max(positions.shape[0], 1)
    grad_on = torch.is_grad_enabled()
    cfg = {
        "formula": formula,
        "params": params,
        "closed_form": has_closed_form(formula, params),
        "tau": tau,
        "factor": tau**2 if tau_squared else 1.0,
        "scale": 1.0 if reduction == "sum" else 1.0 / float(count),
        "ce_weight": float(ce_weight),
        "kd_weight": float(kd_weight),
        "chunk_rows": chunk_rows
        or rows_per_chunk(student_hidden.device, vocab, student_hidden.dtype, cpu_bytes=FUSED_CPU_CHUNK_BYTES),
        "stats": {} if stats is None else stats,
        "support": support,
        "need_grad": (grad_on and student_hidden.requires_grad, grad_on and student_head_weight.requires_grad),
    }
    return _FusedLoss.apply(student_hidden, student_head_weight, teacher, labels, positions, cfg)
