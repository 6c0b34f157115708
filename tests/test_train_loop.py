"""The plain distillation loop: accumulation equals the larger batch, the schedule, recording, errors."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from kdviz.methods import CMA, KDCollator, VanillaKD
from kdviz.record import Recorder, load_replay, open_run
from kdviz.record.store import RecordWriteError
from kdviz.train.loop import NonFiniteLossError, TrainConfig, batches, distill, warmup_cosine
from tests import kd_helpers

EXAMPLES = [{"prompt": p, "response": r} for p, r in kd_helpers.pairs(24)]


def vanilla(seed=1):
    tok = kd_helpers.bpe_tokenizer()
    student = kd_helpers.student_model(len(tok), seed=seed)
    teacher = kd_helpers.teacher_model(len(tok))
    return VanillaKD(student, teacher, divergence="akl"), KDCollator(tok)


def test_gradient_accumulation_equals_the_larger_batch():
    runs = {}
    for accum, size in ((1, 4), (2, 2), (4, 1)):
        method, collator = vanilla()
        cfg = TrainConfig(steps=2, batch_size=size, grad_accum=accum, lr=1e-2, warmup_fraction=0.0, seed=3)
        result = distill(method, collator, EXAMPLES, cfg, progress=False)
        runs[accum] = (result.history, torch.nn.utils.parameters_to_vector(method.student.parameters()))
    base_history, base_params = runs[1]
    for accum in (2, 4):
        history, params = runs[accum]
        for column in ("loss", "ce", "kd", "grad_norm/student"):
            torch.testing.assert_close(torch.tensor(history[column].values), torch.tensor(base_history[column].values),
                                       rtol=1e-4, atol=1e-6)
        # AdamW divides by sqrt(v): where a gradient is ~1e-7, float32 summation order moves the update by a
        # visible fraction of lr, so the parameters are compared to 1e-3 lr (the grad norms above are exact).
        torch.testing.assert_close(params, base_params, rtol=1e-4, atol=1e-3 * cfg.lr)


def test_training_reduces_the_loss_and_records_a_run(tmp_path):
    method, collator = vanilla()
    evaluated = []

    def evaluator(student):
        evaluated.append(student.training)
        return {"score": 1.0}

    with Recorder(tmp_path / "run", every=5, samples=2) as rec:
        cfg = TrainConfig(steps=30, batch_size=4, lr=1e-2, eval_every=10)
        result = distill(method, collator, EXAMPLES, cfg, recorder=rec, evaluator=evaluator, progress=False)
    loss = result.history["loss"]
    assert loss.iloc[-5:].mean() < 0.8 * loss.iloc[:5].mean()
    assert [e["step"] for e in result.evaluations] == [10, 20, 30] and evaluated == [False] * 3
    assert result.history["lr"].iloc[0] == pytest.approx(1e-2 / 3)  # warmup: 3 of 30 steps
    assert not method.teacher.training and not any(p.requires_grad for p in method.teacher.parameters())
    run = open_run(tmp_path / "run")
    assert {"loss", "kd", "ce"} <= set(run.scalars["name"]) and run.scalars["step"].max() == 29


def test_cross_tokenizer_method_trains_its_projectors():
    s_tok, t_tok = kd_helpers.unigram_tokenizer(), kd_helpers.bpe_tokenizer()
    student, teacher = kd_helpers.student_model(len(s_tok)), kd_helpers.teacher_model(len(t_tok))
    method = CMA(student, teacher)
    before = [p.detach().clone() for p in method.parameters()]
    result = distill(method, KDCollator(s_tok, t_tok), EXAMPLES, TrainConfig(steps=3, batch_size=4), progress=False)
    assert "grad_norm/method" in result.history and (result.history["grad_norm/method"] > 0).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, method.parameters(), strict=True))


def test_schedule_and_bad_config():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=0.02) and f(99) < 0.01
    with pytest.raises(ValueError, match="grad_accum must be a positive integer"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        TrainConfig(warmup_fraction=1.0)
    method, collator = vanilla()
    with pytest.raises(ValueError, match="examples is empty"):
        distill(method, collator, [], TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="has no student model"):
        distill(VanillaKD(), collator, EXAMPLES, TrainConfig(steps=1), progress=False)


class NaNAt:
    """Wraps a method; its ``call``-th forward (0-based, counting micro-batches) returns a NaN loss (as an
    overflow in the student's forward would; the methods refuse NaN logits themselves).

    Before that forward it snapshots the student's parameters (those the previous steps left)."""

    def __init__(self, method, call):
        self.inner, self.call, self.calls, self.snapshot = method, call, 0, None
        self.student, self.teacher = method.student, method.teacher
        self.parameters, self.train = method.parameters, method.train

    def __call__(self, batch):
        call, self.calls = self.calls, self.calls + 1
        if call != self.call:
            return self.inner(batch)
        self.snapshot = torch.nn.utils.parameters_to_vector(self.student.parameters()).detach().clone()
        out = self.inner(batch)
        nan = torch.tensor(float("nan"))
        return dataclasses.replace(out, loss=out.loss * nan, terms={**out.terms, "loss": nan, "kd": nan})


def test_a_non_finite_loss_stops_with_the_step_and_its_replay_and_leaves_the_weights(tmp_path):
    method, collator = vanilla()
    wrapped = NaNAt(method, call=3)
    cfg = TrainConfig(steps=6, batch_size=2, lr=1e-2)
    with Recorder(tmp_path / "run", every=1, samples=1) as rec, pytest.raises(NonFiniteLossError) as caught:
        distill(wrapped, collator, EXAMPLES, cfg, recorder=rec, progress=False)
    error = caught.value
    assert error.step == 3 and "step 3" in str(error) and str(error.replay) in str(error)
    assert error.replay.exists() and load_replay(error.replay)[1]["step"] == 3
    params = torch.nn.utils.parameters_to_vector(method.student.parameters())
    assert torch.isfinite(params).all() and torch.equal(params, wrapped.snapshot)
    assert all(p.grad is None for p in method.student.parameters())
    events = open_run(tmp_path / "run").table("events")
    assert (events["step"] == 3).any() and (events["kind"] == "nonfinite").all()


def test_a_non_finite_step_is_skipped_on_request():
    method, collator = vanilla()
    wrapped = NaNAt(method, call=3)
    cfg = TrainConfig(steps=6, batch_size=2, lr=1e-2, on_nonfinite="skip")
    with pytest.warns(RuntimeWarning, match="skipped step 3"):
        result = distill(wrapped, collator, EXAMPLES, cfg, progress=False)
    assert result.history["skipped"].tolist() == [False, False, False, True, False, False]
    assert torch.isfinite(torch.nn.utils.parameters_to_vector(method.student.parameters())).all()
    assert result.history.loc[~result.history["skipped"], "loss"].notna().all()


def test_the_recorder_sees_every_micro_batch(tmp_path):
    method, collator = vanilla()
    wrapped = NaNAt(method, call=0)  # micro-batch 0 of step 0
    cfg = TrainConfig(steps=4, batch_size=2, grad_accum=2, lr=1e-2, on_nonfinite="skip")
    with Recorder(tmp_path / "run", every=1, samples=1) as rec, pytest.warns(RuntimeWarning, match="step 0"):
        distill(wrapped, collator, EXAMPLES, cfg, recorder=rec, progress=False)
    run = open_run(tmp_path / "run")
    assert run.table("events")["step"].tolist() == [0, 0]  # loss and kd of micro-batch 0
    replay = load_replay(run.replays()[0])
    source = batches(EXAMPLES, 2, cfg.seed)
    first = collator(next(source))
    assert torch.equal(replay[0]["student_input_ids"], first.student_input_ids[replay[1]["rows"]])

    for log_every in (1, 2):
        method, collator = vanilla()
        cfg = TrainConfig(steps=4, batch_size=2, grad_accum=2, lr=1e-2, log_every=log_every)
        with Recorder(tmp_path / f"every{log_every}", every=1, samples=1) as rec:
            result = distill(method, collator, EXAMPLES, cfg, recorder=rec, progress=False)
        source = batches(EXAMPLES, 2, cfg.seed)
        tokens = [int((collator(next(source)).student_targets != -100).sum()) for _ in range(8)]
        true_seen = [sum(tokens[: 2 * (s + 1)]) for s in range(4)]
        scalars = open_run(tmp_path / f"every{log_every}").scalars.set_index(["name", "step"])["value"]
        logged = list(range(0, 4, log_every))
        assert [scalars["tokens_seen", s] for s in logged] == [true_seen[s] for s in logged]
        for term in ("loss", "kd", "ce"):  # the step's token-weighted mean, as the loop's history has it
            np.testing.assert_allclose([scalars[term, s] for s in logged], result.history[term].iloc[logged],
                                       rtol=1e-5)


def test_resume_continues_the_step_count_and_hides_nothing(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=2, lr=1e-2)
    for resume in (False, True):
        method, collator = vanilla()
        with Recorder(tmp_path / "run", every=1, samples=1, resume=resume) as rec:
            result = distill(method, collator, EXAMPLES, cfg, recorder=rec, progress=False)
    assert result.history["step"].tolist() == [3, 4, 5]
    run = open_run(tmp_path / "run")
    loss = run.scalars.query("name == 'loss'")
    assert loss["step"].tolist() == list(range(6))
    everything = run.table("scalars", history=True).query("name == 'loss'")
    assert everything["session"].tolist() == [0, 0, 0, 1, 1, 1] and len(run.meta["sessions"]) == 2
    seen = run.scalars.query("name == 'tokens_seen'")["value"]
    assert seen.is_monotonic_increasing


def test_a_full_disk_stops_or_trains_on_unrecorded(tmp_path, monkeypatch):
    from tests.test_record_store import fill_disk_after

    for policy in ("stop", "continue"):
        method, collator = vanilla()
        cfg = TrainConfig(steps=6, batch_size=2, lr=1e-2, on_record_error=policy)
        rec = Recorder(tmp_path / policy, every=1, samples=1, flush_every=1)
        with fill_disk_after(monkeypatch, 20_000):
            if policy == "stop":
                with pytest.raises(RecordWriteError, match=f"run directory {tmp_path / policy}"):
                    distill(method, collator, EXAMPLES, cfg, recorder=rec, progress=False)
            else:
                with pytest.warns(RuntimeWarning, match="training goes on without recording"):
                    result = distill(method, collator, EXAMPLES, cfg, recorder=rec, progress=False)
                assert len(result.history) == 6 and result.history["loss"].notna().all()
            with warnings.catch_warnings(record=True):  # the stopped run's close warns about its lost buffer
                rec.close()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "damaged record" warning: the torn bytes were cut off
            run = open_run(tmp_path / policy)
        assert 0 < run.scalars["step"].max() < 5
