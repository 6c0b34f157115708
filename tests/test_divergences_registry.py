"""The registry contract: a divergence registered with ``@register`` and no closed-form gradient is a full citizen
(the chunked engine differentiates it with autograd, the fused path and the test helpers pick it up, its docs are
generated); aliases; the generated part of docs/methods.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdviz
from kdviz import divergences
from kdviz.divergences import Out, register
from kdviz.ops import Rows, has_closed_form
from tests import reference
from tests.test_chunked import check_chunked_matches_plain, run
from tests.test_divergences import cases


def _hellinger(r: Rows, stats: dict, scale: float = 1.0) -> Out:
    """Squared Hellinger distance: ``scale sum_v (sqrt(p) - sqrt(q))^2 / 2``."""
    return scale * 0.5 * r.vsum((r.exp(0.5 * r.logp) - r.exp(0.5 * r.logq)) ** 2), None


def hellinger_reference(student, teacher, tau=1.0, support="full", scale=1.0):
    p, q = reference.distributions(student, teacher, tau, support)
    return scale * 0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(-1)


@pytest.fixture
def hellinger():
    """``hellinger`` (alias ``hd``) registered for one test, then removed."""
    before, aliases = dict(kdviz.DIVERGENCES), dict(divergences.ALIASES)
    register("hellinger", aliases=("hd",))(_hellinger)
    yield "hellinger"
    kdviz.DIVERGENCES.clear()
    kdviz.DIVERGENCES.update(before)
    divergences.ALIASES.clear()
    divergences.ALIASES.update(aliases)


def pair(seed=0, b=2, t=5, v=23):
    gen = torch.Generator().manual_seed(seed)
    s, te = torch.randn(b, t, v, generator=gen) * 2, torch.randn(b, t, v, generator=gen) * 2
    te[..., -3:] = float("-inf")  # a filtered teacher: the true divergence stays finite
    return s, te, torch.rand(b, t, generator=gen) < 0.8


def test_a_formula_without_closed_form_gradient_runs_on_the_chunked_engine(hellinger):
    formula = kdviz.DIVERGENCES[hellinger].formula
    assert not has_closed_form(formula, {}) and has_closed_form(kdviz.DIVERGENCES["fkl"].formula, {})
    s, t, mask = pair()
    value, grad = run(hellinger, s, t, mask, "chunked", "none", {"scale": 2.0}, chunk_rows=3)
    want = np.zeros(mask.shape)
    want[mask.numpy()] = hellinger_reference(s[mask].double().numpy(), t[mask].double().numpy(), scale=2.0)
    np.testing.assert_allclose(value.numpy(), want, rtol=1e-5, atol=1e-7)
    # the gradient: float64 autograd through the same formula on the plain engine
    s64 = s.double().requires_grad_()
    kdviz.divergence(hellinger, s64, t.double(), mask, engine="plain", reduction="sum", scale=2.0).backward()
    torch.testing.assert_close(grad.double(), s64.grad, rtol=1e-4, atol=1e-6)


def test_the_test_helpers_pick_up_a_new_divergence(hellinger):
    assert (hellinger, {}) in cases()
    for reduction, support in (("mean", "full"), ("sum", "shared"), ("none", "full")):
        check_chunked_matches_plain(hellinger, {}, pair(1), reduction, 2, 1.5, True, support)


def test_a_new_divergence_has_generated_docs_an_alias_and_a_fused_path(hellinger):
    doc = kdviz.DIVERGENCES[hellinger].__doc__
    assert doc.startswith("Squared Hellinger distance") and "scale=1.0)``; aliases: 'hd'" in doc
    assert "| `hellinger` | `hd` | Squared Hellinger distance" in divergences.registry_markdown()
    assert divergences.signature("hd").startswith("hellinger(student_logits, teacher_logits, mask=None, *, tau=1.0")
    s, t, mask = pair(2)
    torch.testing.assert_close(kdviz.divergence("hd", s, t, mask), kdviz.divergence(hellinger, s, t, mask))
    hidden, head = torch.randn(2, 5, 8), torch.randn(23, 8)
    labels = torch.randint(0, 23, (2, 5))
    got = kdviz.fused_divergence("hd", hidden, head, labels, teacher_logits=t, ce_weight=0.0, kd_weight=1.0)
    torch.testing.assert_close(got, kdviz.divergence(hellinger, hidden @ head.T, t))


def test_names_are_registered_once():
    with pytest.raises(ValueError, match="'fkl' is already registered"):
        register("fkl")(_hellinger)
    with pytest.raises(ValueError, match="'jsd' is already registered"):
        register("new_name", aliases=("jsd",))(_hellinger)
    assert "new_name" not in kdviz.DIVERGENCES


def test_aliases_name_the_same_divergence():
    s, t, _ = pair(3)
    for alias, name in divergences.ALIASES.items():
        same = kdviz.divergence(name, s, t, support="shared")
        assert torch.equal(kdviz.divergence(alias, s, t, support="shared"), same)
    with pytest.raises(ValueError, match=r"unknown divergence 'kl'; valid names: fkl, rkl, .*\(aliases: forward_kl"):
        kdviz.divergence("kl", s, t)
