"""The cross-entropy every method shares: input checks and exact second derivatives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdviz.ops import cross_entropy


def logits_and_targets(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 5, 11, generator=gen, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5), generator=gen)
    targets[0, :2] = -100
    return z, targets


@pytest.mark.parametrize(("value", "kind"), [(math.nan, "NaN"), (math.inf, r"\+inf")])
def test_nan_or_plus_inf_logits_raise_with_their_index(value, kind):
    z, targets = logits_and_targets()
    bad = z.detach().clone()
    bad[1, 3, 7] = value
    with pytest.raises(ValueError, match=rf"logits contain {kind} at index \(1, 3, 7\)"):
        cross_entropy(bad, targets)
    bad[1, 3, 7] = 0.0
    bad[0, 1, 4] = value  # an untrained position may hold anything
    assert torch.isfinite(cross_entropy(bad, targets)[0])


def test_neg_inf_at_the_target_is_a_clear_error_elsewhere_legal():
    z, targets = logits_and_targets()
    bad = z.detach().clone()
    bad[1, 2, (int(targets[1, 2]) + 1) % 11] = -math.inf  # not the target: legal
    assert torch.isfinite(cross_entropy(bad, targets)[0])
    bad[1, 2, int(targets[1, 2])] = -math.inf
    with pytest.raises(ValueError, match=r"-inf at the target id .* of position \(1, 2\)"):
        cross_entropy(bad, targets)


def test_out_of_range_targets_raise():
    z, targets = logits_and_targets()
    targets[1, 1] = 11
    with pytest.raises(ValueError, match=r"targets must be -100 or a token id in \[0, 11\)"):
        cross_entropy(z, targets)


def test_double_backward_is_exact():
    z, targets = logits_and_targets()
    mask = targets != -100

    def ours(x):
        return cross_entropy(x, targets)[0]

    def plain(x):
        return F.cross_entropy(x[mask], targets[mask])

    (g_ours,) = torch.autograd.grad(ours(z), z, create_graph=True)
    (g_plain,) = torch.autograd.grad(plain(z), z, create_graph=True)
    v = torch.randn_like(z)
    (h_ours,) = torch.autograd.grad((g_ours * v).sum(), z)
    (h_plain,) = torch.autograd.grad((g_plain * v).sum(), z)
    torch.testing.assert_close(g_ours, g_plain)
    torch.testing.assert_close(h_ours, h_plain)
    assert torch.autograd.gradgradcheck(ours, (z,))


def test_the_next_token_shift_on_labels_offsets_and_alignments():
    from kdviz.ops import IGNORE, next_token_targets, shift_alignment, shift_left

    labels = torch.tensor([[IGNORE, 5, 6, 7], [IGNORE, IGNORE, 8, IGNORE]])
    assert next_token_targets(labels).tolist() == [[5, 6, 7, IGNORE], [IGNORE, 8, IGNORE, IGNORE]]
    offsets = torch.tensor([[[0, 2], [2, 5], [5, 6]]])
    assert shift_left(offsets, 0, dim=1).tolist() == [[[2, 5], [5, 6], [0, 0]]]
    alignment = torch.eye(3, dtype=torch.bool)[None]
    alignment[0, 2, 1] = True
    assert shift_alignment(alignment)[0].int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
