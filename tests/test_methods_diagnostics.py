"""The typed diagnostics: bad records are refused with errors naming the field, and a record's tensors are
found by name for replays."""

from __future__ import annotations

import pytest
import torch

from kdviz.methods._common import kd_output
from kdviz.methods.diagnostics import Alignment, Logits, TokenValues, Transport, diagnostic_tensors


def test_records_check_their_shapes_and_choices():
    with pytest.raises(ValueError, match=r"Alignment.weights must be a 3-d tensor, got shape \(2, 3\)"):
        Alignment(torch.zeros(2, 3), "soft")
    with pytest.raises(ValueError, match="Alignment.over must be one of"):
        Alignment(torch.zeros(1, 2, 3), "soft", over="rows")
    with pytest.raises(ValueError, match="Alignment.reference must be one of"):
        Alignment(torch.zeros(1, 2, 3), "hard", reference="characters")
    with pytest.raises(ValueError, match="Logits.space must be one of"):
        Logits(torch.zeros(1, 2, 3), "student", "shared")
    with pytest.raises(ValueError, match="TokenValues.values must be a 2-d tensor, got list"):
        TokenValues([1.0], "student")
    with pytest.raises(ValueError, match=r"Transport.cost has shape \(1, 3, 2\), plan \(1, 2, 3\)"):
        Transport(torch.zeros(1, 2, 3), torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="sequence_cost must be"):
        Transport(torch.zeros(2, 2, 3), torch.zeros(2, 2, 3), torch.zeros(3))


def test_tensors_by_name_and_the_output_helper():
    plan = Transport(torch.ones(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1))
    assert set(diagnostic_tensors("transport", plan)) == {"transport.plan", "transport.cost", "transport.sequence_cost"}
    values = torch.arange(3.0)[None]
    assert diagnostic_tensors("token_kd", TokenValues(values, "student"))["token_kd"] is values
    assert diagnostic_tensors("mask", values)["mask"] is values and diagnostic_tensors("n", 3) == {}
    x = torch.tensor(2.0, requires_grad=True)
    out = kd_output(3 * x, {"kd": 2 * x}, {"acc": x * 0 + 0.5}, {})
    assert list(out.terms) == ["loss", "kd", "acc"] and not any(v.requires_grad for v in out.terms.values())
    assert out.parts["kd"].requires_grad and out.loss.requires_grad
