"""The Recorder: every probe's data round-trips through the store; sampling, numerics replays, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdviz.headtail import HeadTail, head_tail
from kdviz.methods.diagnostics import Alignment, Logits, Transport
from kdviz.record import Recorder, load_replay, open_run
from kdviz.record.probes import _strided
from tests.record_fakes import PROMPT, T_S, T_T, FakeOutput, make_batch, make_output


def _record(path, steps=6, every=2, **kwargs):
    with Recorder(path, every=every, samples=2, meta={"method": {"name": "fake", "tau": 2.0}}, **kwargs) as rec:
        for step in range(steps):
            rec.log(step, make_batch(), make_output(step), lr=1e-3, grad_norms={"student": 2.0})
    return rec


def test_terms_every_step_and_metadata(tmp_path):
    rec = _record(tmp_path / "run")
    run = open_run(tmp_path / "run")
    df = run.scalars
    kd = df[df["name"] == "kd"]
    assert kd["step"].tolist() == list(range(6))
    np.testing.assert_allclose(kd["value"], [1 / (s + 1) for s in range(6)], rtol=1e-6)
    for name in ("loss", "ce", "t2s_acc", "lr", "grad_norm/student", "diag/sinkhorn_iterations"):
        assert len(df[df["name"] == name]) == 6, name
    seen = df[df["name"] == "tokens_seen"]["value"].tolist()
    per_step = 3 * (T_S - PROMPT)  # shifted labels: the positions predicting response tokens
    assert seen == [per_step * (k + 1) for k in range(6)]
    assert df["wall_time"].is_monotonic_increasing
    meta = run.meta
    assert meta["method"] == {"name": "fake", "tau": 2.0} and meta["recorder"]["every"] == 2
    assert meta["sample_ids"] == ["a", "b"] and meta["stats"]["steps_logged"] == 6
    assert rec.stats["bytes_written"] > 0 and run.size_bytes >= rec.stats["bytes_written"]


def test_head_tail_aggregates_and_per_token(tmp_path):
    _record(tmp_path / "run")
    run = open_run(tmp_path / "run")
    agg = run.head_tail()
    assert sorted(agg["step"].unique()) == [0, 2, 4]
    assert set(agg["space"]) == {"t2s"}  # student_logits vs t2s_logits; teacher_logits has another vocab
    assert set(agg["statistic"]) == set(HeadTail.statistics())
    out, batch = make_output(2), make_batch()
    mask = torch.zeros(3, T_S, dtype=torch.bool)
    mask[:, PROMPT - 1 : -1] = True
    expected = head_tail(out.diagnostics["student_logits"].logits, out.diagnostics["t2s_logits"].logits, mask)
    row = agg[(agg["step"] == 2) & (agg["statistic"] == "fkl")].iloc[0]
    assert row["count"] == int(mask.sum())
    np.testing.assert_allclose(row["mean"], float(expected.fkl[mask].mean()), rtol=1e-5)
    np.testing.assert_allclose(row["q50"], float(expected.fkl[mask].median()), rtol=0.2)
    per_token = run.head_tail(per_token=True)
    s1 = per_token[(per_token["step"] == 2) & (per_token["sample"] == 1)]
    assert s1["position"].tolist() == list(range(PROMPT - 1, T_S - 1))
    assert s1["token"].tolist() == batch.student_tokens[1][PROMPT:]
    np.testing.assert_allclose(s1["w_head"], expected.w_head[1][mask[1]].numpy(), rtol=1e-5)


def test_alignment_matrices_with_tokens_and_reference(tmp_path):
    _record(tmp_path / "run")
    run = open_run(tmp_path / "run")
    assert run.matrix_steps("t2s_weight") == [0, 2, 4]
    m = run.matrix("t2s_weight", step=4, sample=1)
    out, batch = make_output(4), make_batch()
    rows, cols = list(range(PROMPT - 1, T_S - 1)), list(range(PROMPT - 1, T_T - 1))
    np.testing.assert_allclose(m.values, out.diagnostics["t2s_weight"].weights[1][rows][:, cols].numpy(), rtol=1e-6)
    assert m.row_tokens == batch.student_tokens[1][PROMPT:] and m.col_tokens == batch.teacher_tokens[1][PROMPT:]
    shifted = batch.alignment[1, 1:, 1:]
    np.testing.assert_array_equal(m.reference, shifted[[r for r in rows]][:, cols].numpy())
    assert m.info["example_id"] == "b" and 0 <= m.info["overlap_mass"] <= 1
    s2t = run.matrix("s2t_weight", step=4, sample=1)  # stored like every matrix: student rows, teacher columns
    np.testing.assert_allclose(s2t.values, out.diagnostics["s2t_weight"].weights[1][rows][:, cols].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(s2t.reference, m.reference)
    assert s2t.info["over"] == "student" and m.info["over"] == "teacher"
    names = set(run.scalars["name"])
    assert {"alignment/t2s_weight/argmax_overlap", "alignment/s2t_weight/overlap_mass"} <= names


def test_transport_plans_and_vocab_map(tmp_path):
    _record(tmp_path / "run")
    run = open_run(tmp_path / "run")
    out = make_output(2)
    rows, cols = list(range(PROMPT - 1, T_S - 1)), list(range(PROMPT - 1, T_T - 1))  # both responses
    transport = out.diagnostics["transport"]
    for name, full in (("transport_plan", transport.plan), ("transport_cost", transport.cost)):
        m = run.matrix(name, step=2, sample=0)  # student rows, teacher columns
        np.testing.assert_allclose(m.values, full[0][rows][:, cols].numpy(), rtol=1e-6)
        assert m.row_tokens == make_batch().student_tokens[0][PROMPT:] and m.reference.shape == (len(rows), len(cols))
    vm = run.table("vocab_map")
    sel = vm[(vm["step"] == 2) & (vm["sample"] == 0)]
    assert sel["teacher_id"].tolist() == out.diagnostics["topk_ids"].teacher_ids[0].tolist()
    assert sel["student_id"].tolist() == out.diagnostics["topk_ids"].student_ids[0].tolist()


def test_token_losses_and_texts(tmp_path):
    _record(tmp_path / "run")
    run = open_run(tmp_path / "run")
    tokens = run.tokens()
    out, batch = make_output(0), make_batch()
    s0 = tokens[(tokens["step"] == 0) & (tokens["sample"] == 0)]
    where = list(range(PROMPT - 1, T_S - 1))
    np.testing.assert_allclose(s0["token_kd"], out.diagnostics["token_kd"].values[0][where].numpy(), rtol=1e-6)
    ce = torch.nn.functional.cross_entropy(
        out.diagnostics["student_logits"].logits[0], batch.student_input_ids[0].roll(-1), reduction="none"
    )
    np.testing.assert_allclose(s0["token_ce"], ce[where].numpy(), rtol=1e-5)
    assert s0["input_token"].tolist() == batch.student_tokens[0][PROMPT - 1 : -1]
    assert run.texts()["text"].tolist() == ["text of example a", "text of example b"]


class _Vocab:
    """A stand-in tokenizer: id -> ``<side><id>``."""

    def __init__(self, side):
        self.side = side

    def convert_ids_to_tokens(self, ids):
        return [f"{self.side}{i}" for i in ids]


def test_top5_next_tokens_of_both_sides(tmp_path):
    import json

    from kdviz.viz import token_losses, vocab_map_table

    _record(tmp_path / "run", tokenizers={"student": _Vocab("s"), "teacher": _Vocab("t")})
    tokens = open_run(tmp_path / "run").tokens()
    out = make_output(2)
    s0 = tokens[(tokens["step"] == 2) & (tokens["sample"] == 0)]
    where = list(range(PROMPT - 1, T_S - 1))
    for column, logits in (("student_top5", "student_logits"), ("teacher_top5", "t2s_logits")):
        # the fake teacher_logits have the teacher's length and vocabulary: the hover uses t2s_logits
        probs, ids = out.diagnostics[logits].logits[0].softmax(-1).topk(5, -1)
        for k, cell in zip(where, s0[column], strict=True):
            entries = json.loads(cell)
            assert [t for t, _ in entries] == [f"s{i}" for i in ids[k].tolist()]  # both in the student vocabulary
            np.testing.assert_allclose([p for _, p in entries], probs[k].numpy(), atol=6e-5)
    hover = token_losses(open_run(tmp_path / "run"), 2, 0).data[0].customdata
    assert "teacher top-5:" in hover[0][0] and "student top-5:" in hover[0][0]
    # the top-k vocabulary map keeps the strings too, and its table shows them
    vm = open_run(tmp_path / "run").table("vocab_map")
    sel = vm[(vm["step"] == 2) & (vm["sample"] == 0)]
    assert sel["teacher_token"].tolist() == [f"t{i}" for i in out.diagnostics["topk_ids"].teacher_ids[0].tolist()]
    assert sel["student_token"].tolist() == [f"s{i}" for i in out.diagnostics["topk_ids"].student_ids[0].tolist()]
    cells = vocab_map_table(open_run(tmp_path / "run"), 2, 0).data[0].cells.values
    assert cells[1][0] == f"t{int(sel['teacher_id'].iloc[0])}\u00a0({int(sel['teacher_id'].iloc[0])})"

    _record(tmp_path / "ids")  # without tokenizers the ids stand in for the strings
    cell = open_run(tmp_path / "ids").tokens()["student_top5"].iloc[0]
    assert all(t.startswith("#") for t, _ in json.loads(cell))
    with pytest.raises(ValueError, match="tokenizers keys"):
        Recorder(tmp_path / "bad", tokenizers={"students": _Vocab("s")})


def test_samples_follow_example_ids(tmp_path):
    with Recorder(tmp_path / "run", every=1, samples=2) as rec:
        rec.log(0, make_batch(("a", "b", "c")), make_output(0))
        rec.log(1, make_batch(("c", "b", "x")), make_output(1))  # b is here, a is not
    tokens = open_run(tmp_path / "run").tokens()
    at1 = tokens[tokens["step"] == 1].groupby("sample")["example_id"].first().to_dict()
    assert at1 == {0: "c", 1: "b"}  # slot 1 keeps following b; slot 0 borrows another row


def test_numerics_replay_saved_once(tmp_path):
    with Recorder(tmp_path / "run", every=2, samples=1) as rec:
        for step in range(5):
            rec.log(step, make_batch(), make_output(step, nan_term=step in (1, 3)))
    run = open_run(tmp_path / "run")
    df = run.scalars
    assert df[df["name"] == "numerics/nonfinite/kd"]["step"].tolist() == [1, 3]
    assert run.table("events")["step"].tolist() == [1, 3]
    (replay,) = run.replays()
    tensors, info = load_replay(replay)
    assert info["step"] == 1 and info["term"] == "kd" and info["rows"] == [1]
    torch.testing.assert_close(tensors["student_input_ids"], make_batch().student_input_ids[[1]])
    assert tensors["out.token_kd"].isnan().any() and info["texts"] == ["text of example b"]
    assert run.meta["replays"] == {"kd": replay.name}
    assert set(df.loc[df["name"] == "numerics/akl_fallbacks", "step"]) == {0, 2, 4}  # the TokenEvents, counted


def test_missing_data_is_noted_once_in_metadata(tmp_path):
    bare = FakeOutput(loss=torch.tensor(1.0), terms={"kd": torch.tensor(1.0)}, diagnostics={})
    with Recorder(tmp_path / "run", every=1) as rec:
        for step in range(3):
            rec.log(step, object(), bare)
    run = open_run(tmp_path / "run")
    notes = run.meta["notes"]
    assert set(notes) == {"head_tail", "alignment", "transport", "token_loss"}
    assert "no Alignment diagnostics" in notes["alignment"]
    assert run.scalars["name"].unique().tolist() == ["loss", "kd"]
    assert run.matrix_names() == [] and run.tokens().empty


def test_probe_subset_and_optimizer(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD([{"params": model.parameters(), "lr": 0.1, "name": "student"}])
    model(torch.ones(1, 3)).sum().backward()
    with Recorder(tmp_path / "run", probes=["terms"], optimizer=opt) as rec:
        rec.log(0, make_batch(), make_output(0))
    run = open_run(tmp_path / "run")
    df = run.scalars.set_index("name")["value"]
    assert df["lr"] == pytest.approx(0.1)
    expected = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert df["grad_norm/student"] == pytest.approx(float(expected))
    assert run.streams() == ["scalars"] and run.meta["recorder"]["probes"] == ["terms"]


def test_probe_failure_warns_and_training_continues(tmp_path):
    broken = make_output(0)
    broken.diagnostics["t2s_weight"] = Alignment(torch.ones(1, 2, 2), "soft")  # batch of 1, not 3: row 1 fails
    with pytest.warns(RuntimeWarning, match="probe 'alignment' failed"), Recorder(tmp_path / "run", every=1) as rec:
        rec.log(0, make_batch(), broken)
        rec.log(1, make_batch(), broken)
    run = open_run(tmp_path / "run")
    assert "failed at step 0" in run.meta["notes"]["alignment"]
    assert run.steps("kd") == [0, 1]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"unknown probe\(s\) \['attention'\]; valid probes are \['terms'"):
        Recorder(tmp_path / "a", probes=["terms", "attention"])
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        Recorder(tmp_path / "b", every=0)
    with pytest.raises(ValueError, match="samples must be"):
        Recorder(tmp_path / "c", samples=-1)
    _record(tmp_path / "run", steps=1)
    with pytest.raises(FileExistsError, match="already holds a kdviz run"):
        Recorder(tmp_path / "run")
    with Recorder(tmp_path / "run", resume=True) as rec:
        with pytest.raises(ValueError, match="step must be"):
            rec.log(-1, make_batch(), make_output(0))
        rec.log(1, make_batch(), make_output(1))
    with pytest.raises(RuntimeError, match="closed"):
        rec.log(2, make_batch(), make_output(2))
    run = open_run(tmp_path / "run")
    seen = run.scalars.query("name == 'tokens_seen'")["value"].tolist()
    assert seen == [15.0, 30.0]  # resumed: tokens_seen continues
    Recorder(tmp_path / "run", overwrite=True).close()
    assert open_run(tmp_path / "run").scalars.empty


def test_head_tail_aggregates_are_capped_to_strided_tokens():
    mask = torch.zeros(4, 300, dtype=torch.bool)
    mask[:, 10:] = True
    thinned = _strided(mask, 256)
    assert int(thinned.sum()) == 256 and not bool((thinned & ~mask).any())
    assert thinned[0].any() and thinned[-1].any()  # spread over the whole batch
    torch.testing.assert_close(_strided(mask[:1, :20], 256), mask[:1, :20])


def test_head_tail_uses_the_shared_vocabulary_alone_when_present(tmp_path):
    out = make_output(0)
    logits = out.diagnostics["student_logits"].logits
    out.diagnostics["teacher_logits"] = Logits(logits.flip(-1), "teacher", "teacher")  # the student's shape
    out.diagnostics["s2t_logits"] = Logits(logits, "student", "teacher")
    with Recorder(tmp_path / "run", every=1) as rec:
        rec.log(0, make_batch(), out)
    run = open_run(tmp_path / "run")
    assert set(run.head_tail()["space"]) == {"shared"} and run.meta["notes"]["head_tail_token_space"] == "shared"


def test_plans_are_cropped_to_both_responses_student_rows(tmp_path):
    out = make_output(0)  # MultiLevelOT's layout: plan and cost matrix [B, T_s, T_t], sequence cost [B]
    full = torch.rand(3, T_S, T_T)
    out.diagnostics["transport"] = Transport(full, full * 2, torch.tensor([1.0, 2.0, 3.0]))
    with Recorder(tmp_path / "run", every=1) as rec:
        rec.log(0, make_batch(), out)
    run = open_run(tmp_path / "run")
    rows, cols = list(range(PROMPT - 1, T_S - 1)), list(range(PROMPT - 1, T_T - 1))
    plan, cost = run.matrix("transport_plan", 0, 1), run.matrix("transport_cost", 0, 1)
    np.testing.assert_allclose(plan.values, full[1][rows][:, cols].numpy())
    np.testing.assert_allclose(cost.values, 2 * plan.values)
    np.testing.assert_array_equal(plan.reference, make_batch().alignment[1, 1:, 1:][rows][:, cols].numpy())
    assert plan.row_tokens == make_batch().student_tokens[1][PROMPT:] and plan.info["sequence_cost"] == 2.0
    assert run.scalars.set_index("name").loc["diag/transport_cost", "value"] == 2.0
    assert "alignment/transport_plan/overlap_mass" in set(run.scalars["name"])


def test_a_plan_of_another_shape_is_refused_with_a_note(tmp_path):
    out = make_output(0)
    out.diagnostics["transport"] = Transport(torch.rand(3, T_T, T_S), torch.rand(3, T_T, T_S))  # teacher rows
    with Recorder(tmp_path / "run", every=1) as rec:
        rec.log(0, make_batch(), out)
    run = open_run(tmp_path / "run")
    assert "expected [B, T_s, T_t]" in run.meta["notes"]["transport"] and "transport_plan" not in run.matrix_names()


def test_alignment_scores_every_step_once_left_out_when_nothing_to_score(tmp_path):
    """The recorder, not the method, scores alignments: at every step (matrices only at recorded ones),
    against the ground truth of the other side's response; a score with no row to judge is left out."""
    from kdviz.align.scores import alignment_scores

    with Recorder(tmp_path / "run", every=2, samples=1) as rec:
        for step in range(3):
            rec.log(step, make_batch(), make_output(step))
    run = open_run(tmp_path / "run")
    assert run.steps("alignment/t2s_weight/argmax_overlap") == [0, 1, 2] and run.matrix_steps("t2s_weight") == [0, 2]
    batch, out = make_batch(), make_output(1)
    mask_s, mask_t = torch.zeros(3, T_S, dtype=torch.bool), torch.zeros(3, T_T, dtype=torch.bool)
    mask_s[:, PROMPT - 1 : -1], mask_t[:, PROMPT - 1 : -1] = True, True
    reference = batch.alignment[:, 1:, 1:]
    reference = torch.nn.functional.pad(reference, (0, 1, 0, 1)) & mask_t[:, None, :]
    want = alignment_scores(out.diagnostics["t2s_weight"].weights, reference, mask_s)
    s2t = alignment_scores(
        out.diagnostics["s2t_weight"].weights.transpose(1, 2), reference.transpose(1, 2) & mask_s[:, None, :], mask_t
    )
    got = run.scalars.query("step == 1").set_index("name")["value"]
    for score in ("argmax_overlap", "overlap_mass", "row_entropy", "scored_rows"):
        assert got[f"alignment/t2s_weight/{score}"] == pytest.approx(float(want[score]), rel=1e-6)
        assert got[f"alignment/s2t_weight/{score}"] == pytest.approx(float(s2t[score]), rel=1e-6)
    empty = make_batch()
    empty.student_labels[:] = -100  # no response: nothing to score
    with Recorder(tmp_path / "empty", every=1) as rec:
        rec.log(0, empty, make_output(0))
    names = set(open_run(tmp_path / "empty").scalars["name"])
    assert "alignment/t2s_weight/scored_rows" in names and "alignment/t2s_weight/argmax_overlap" not in names
    assert open_run(tmp_path / "empty").scalars.set_index("name").loc["alignment/t2s_weight/scored_rows", "value"] == 0
