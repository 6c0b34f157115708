"""What every method does the same way: hold the models, run them, read their heads and embeddings.

Models are reached only through the Hugging Face interfaces every causal LM implements
(``output_hidden_states=True``, ``get_input_embeddings()``, ``get_output_embeddings()``), never through
architecture-specific attribute paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdviz.divergences import canonical_name
from kdviz.methods.base import KDBatch, KDOutput
from kdviz.ops import check_tau, real_number


def attach_models(module: nn.Module, student: nn.Module | None, teacher: nn.Module | None) -> None:
    """Keep the models on ``module`` *without* registering them as submodules.

    ``module.parameters()``, ``state_dict()`` and ``.to()`` then concern only the method's own projectors.
    The teacher is frozen (``requires_grad_(False)``) and put in eval mode.
    """
    if teacher is not None:
        teacher.requires_grad_(False)
        teacher.eval()
    object.__setattr__(module, "student", student)
    object.__setattr__(module, "teacher", teacher)


def check_divergence(name: str, role: str = "divergence") -> str:
    """The registered name of ``name`` (an alias is accepted), or a ``ValueError`` naming ``role``."""
    return canonical_name(name, role)


def check_weights(ce_weight: float, kd_weight: float, tau: float) -> tuple[float, float, float]:
    """The weights and temperature as floats (NumPy and tensor numbers accepted), or a ``ValueError``."""
    weights = []
    for name, value in (("ce_weight", ce_weight), ("kd_weight", kd_weight)):
        value = real_number(name, value)
        if value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        weights.append(value)
    return weights[0], weights[1], check_tau(tau)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_devices(batch: KDBatch, **modules: nn.Module | None) -> None:
    """Raise a ``ValueError`` naming both devices when a model or projector is not on the batch's device."""
    for name, module in modules.items():
        if module is None:
            continue
        device = model_device(module)
        if device != batch.device:
            raise ValueError(
                f"the {name} is on {device} but the batch is on {batch.device}; "
                f"call batch.to({str(device)!r}) (and keep the models and the method on one device)"
            )


def _check_outputs(outputs, role: str, batch_shape: torch.Size, hidden: bool) -> None:
    logits = getattr(outputs, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != batch_shape:
        raise ValueError(
            f"{role}_outputs.logits must be [B, T, V] with [B, T] = {tuple(batch_shape)}, "
            f"got {tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"{role}_outputs.logits must be floating point, got {logits.dtype}")
    if hidden and not getattr(outputs, "hidden_states", None):
        raise ValueError(f"{role}_outputs has no hidden_states; run the {role} with output_hidden_states=True")


def run_models(
    module: nn.Module, batch: KDBatch, student_outputs, teacher_outputs, *, hidden: bool
) -> tuple[object, object]:
    """The student's outputs (with gradients) and the teacher's (eval mode, no gradients).

    Precomputed outputs are used as given; missing ones are computed with the models held by ``module``.
    """
    if student_outputs is None:
        if module.student is None:
            raise ValueError("pass student_outputs=..., or build the method with a student model")
        check_devices(batch, student=module.student)
        student_outputs = module.student(
            input_ids=batch.student_input_ids,
            attention_mask=batch.student_attention_mask,
            output_hidden_states=hidden,
        )
    if teacher_outputs is None:
        if module.teacher is None:
            raise ValueError("pass teacher_outputs=..., or build the method with a teacher model")
        check_devices(batch, teacher=module.teacher)
        module.teacher.eval()
        with torch.no_grad():
            teacher_outputs = module.teacher(
                input_ids=batch.teacher_input_ids,
                attention_mask=batch.teacher_attention_mask,
                output_hidden_states=hidden,
            )
    _check_outputs(student_outputs, "student", batch.student_input_ids.shape, hidden)
    _check_outputs(teacher_outputs, "teacher", batch.teacher_input_ids.shape, hidden)
    for role, out in (("student", student_outputs), ("teacher", teacher_outputs)):
        if out.logits.device != batch.device:
            raise ValueError(f"{role}_outputs.logits is on {out.logits.device} but the batch on {batch.device}")
    return student_outputs, teacher_outputs


def output_head(model: nn.Module, role: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight ``[V, d]`` and bias (or None), from ``get_output_embeddings()``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"the {role} has no linear LM head (get_output_embeddings() returned {head!r})")
    bias = getattr(head, "bias", None)
    return weight, bias if isinstance(bias, torch.Tensor) else None


def embedding_table(model: nn.Module, role: str) -> nn.Module:
    table = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(getattr(table, "weight", None), torch.Tensor):
        raise ValueError(f"the {role} has no input embedding table (get_input_embeddings() returned {table!r})")
    return table


def head_dim(model: nn.Module, role: str) -> int:
    """Width of what the LM head consumes (the last hidden state)."""
    return output_head(model, role)[0].shape[1]


def frozen_head_logits(hidden: torch.Tensor, model: nn.Module, role: str) -> torch.Tensor:
    """``hidden @ W.T (+ b)`` with the model's LM head detached, in float32."""
    weight, bias = output_head(model, role)
    return F.linear(
        hidden.float(),
        weight.detach().float(),
        None if bias is None else bias.detach().float(),
    )


def embed(model: nn.Module, ids: torch.Tensor, role: str) -> torch.Tensor:
    """Detached float32 input embeddings of ``ids`` (``-100`` must already be replaced)."""
    with torch.no_grad():
        return embedding_table(model, role)(ids).float()


def project(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Apply a projector in its own dtype, return float32."""
    return linear(x.to(linear.weight.dtype)).float()


def kd_output(
    loss: torch.Tensor,
    parts: dict[str, torch.Tensor],
    metrics: dict[str, torch.Tensor],
    diagnostics: dict[str, object],
) -> KDOutput:
    """A method's :class:`KDOutput`: ``terms`` holds ``loss``, every loss part (``parts``, kept attached
    in ``out.parts``) and every metric, all detached."""
    terms = {"loss": loss, **parts, **metrics}
    return KDOutput(loss, {name: value.detach() for name, value in terms.items()}, diagnostics, parts)


def check_ids(name: str, ids: torch.Tensor, mask: torch.Tensor, size: int, what: str) -> None:
    """Raise a ``ValueError`` when an id at a ``mask`` position is outside ``[0, size)`` (``what`` names the
    table, e.g. "the student's vocabulary")."""
    picked = ids[mask]
    if picked.numel() and not (0 <= int(picked.min()) and int(picked.max()) < size):
        bad = ((ids < 0) | (ids >= size)) & mask
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} must be token ids in [0, {size}) ({what}) where trained, got {int(ids[first])} at index {first}"
        )


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask`` (0 when the mask is empty); detached float32."""
    x = x.detach().float()
    return (x * mask).sum() / mask.sum().clamp(min=1)
