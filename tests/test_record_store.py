"""The run store: frame format, damage handling (warning + skip), metadata checks, resume/overwrite, no pickle."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest

from kdviz.record import FORMAT_VERSION, TornRecordWarning, open_run
from kdviz.record.frames import Frame, Problem, encode, scan
from kdviz.record.store import RunWriter


def _write_scalars(path, steps, **kwargs) -> RunWriter:
    writer = RunWriter(path, meta={"method": {"name": "fake"}}, **kwargs)
    for step in steps:
        writer.append_rows(
            "scalars", {"step": [step, step], "name": ["a", "b"], "value": [step, -step], "wall_time": [0.0, 0.0]}
        )
        writer.flush()
    return writer


def test_frame_round_trip_and_allowed_dtypes():
    arrays = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3),
        "i": np.array([1, -2], dtype=np.int64),
        "b": np.array([True, False]),
        "h": np.ones(3, dtype=np.float16),
    }
    (frame,) = scan(encode({"text": ["KDVR inside a string", "é"]}, arrays))
    assert isinstance(frame, Frame) and frame.attrs == {"text": ["KDVR inside a string", "é"]}
    for name, value in arrays.items():
        np.testing.assert_array_equal(frame.arrays[name], value)
        assert frame.arrays[name].dtype == value.dtype
    with pytest.raises(TypeError, match="only numeric and bool"):
        encode({}, {"o": np.array([{"a": 1}], dtype=object)})


def test_scan_torn_tail_and_damage():
    a, b, c = encode({"k": 0}, {"x": np.zeros(4)}), encode({"k": 1}), encode({"k": 2})
    data = a + b + c
    torn = list(scan(data[:-5]))
    assert [f.attrs["k"] for f in torn if isinstance(f, Frame)] == [0, 1]
    assert isinstance(torn[-1], Problem) and torn[-1].incomplete
    damaged = bytearray(data)
    damaged[len(a) + 30] ^= 0xFF  # inside frame b's header
    items = list(scan(bytes(damaged)))
    assert [f.attrs["k"] for f in items if isinstance(f, Frame)] == [0, 2]
    (problem,) = [p for p in items if isinstance(p, Problem)]
    assert problem.offset == len(a) and not problem.incomplete and "checksum" in problem.reason
    garbage = list(scan(data + b"\x00garbage"))
    assert isinstance(garbage[-1], Problem) and not garbage[-1].incomplete


def test_round_trip_and_live_refresh(tmp_path):
    writer = _write_scalars(tmp_path / "run", range(3))
    run = open_run(tmp_path / "run")
    assert run.meta["format_version"] == FORMAT_VERSION and run.meta["method"] == {"name": "fake"}
    assert run.scalars["step"].tolist() == [0, 0, 1, 1, 2, 2]
    writer.append_rows("scalars", {"step": [3], "name": ["a"], "value": [3.0], "wall_time": [0.0]})
    assert run.refresh().scalars["step"].max() == 2  # buffered, not yet flushed
    writer.close()
    assert run.refresh().scalars["step"].max() == 3
    assert run.steps("a") == [0, 1, 2, 3]


def test_truncated_file_warns_and_keeps_every_complete_row(tmp_path):
    _write_scalars(tmp_path / "run", range(4)).close()
    path = tmp_path / "run" / "scalars.kdr"
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.warns(TornRecordWarning, match=r"scalars\.kdr.*incomplete"):
        run = open_run(tmp_path / "run")
    assert run.scalars["step"].tolist() == [0, 0, 1, 1, 2, 2]  # the torn step 3 is dropped whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same torn frame is reported once
        run.refresh()
    path.write_bytes(data)  # the writer finishes its frame: a later refresh picks it up
    assert run.refresh().scalars["step"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_corrupted_middle_frame_is_skipped_with_a_warning(tmp_path):
    _write_scalars(tmp_path / "run", range(3)).close()
    path = tmp_path / "run" / "scalars.kdr"
    data = bytearray(path.read_bytes())
    frame_size = len(data) // 3
    data[frame_size + frame_size // 2] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.warns(TornRecordWarning, match=f"damaged record at byte {frame_size}"):
        run = open_run(tmp_path / "run")
    assert run.scalars["step"].tolist() == [0, 0, 2, 2]


def test_resume_after_a_torn_tail_appends_readable_frames(tmp_path):
    _write_scalars(tmp_path / "run", range(2)).close()
    path = tmp_path / "run" / "scalars.kdr"
    path.write_bytes(path.read_bytes()[:-3])
    _write_scalars(tmp_path / "run", [1, 2], resume=True).close()
    with pytest.warns(TornRecordWarning):
        run = open_run(tmp_path / "run")
    df = run.scalars
    assert df["step"].tolist() == [0, 0, 1, 1, 2, 2]
    assert len(run.meta["sessions"]) == 2 and run.meta["sessions"][1]["resumed"]


def test_resume_keeps_the_last_value_of_a_repeated_step(tmp_path):
    _write_scalars(tmp_path / "run", range(3)).close()
    writer = RunWriter(tmp_path / "run", resume=True)
    writer.append_rows("scalars", {"step": [2], "name": ["a"], "value": [99.0], "wall_time": [1.0]})
    writer.close()
    df = open_run(tmp_path / "run").scalars
    assert df.loc[(df["step"] == 2) & (df["name"] == "a"), "value"].tolist() == [99.0]


def test_existing_run_is_refused_unless_resume_or_overwrite(tmp_path):
    _write_scalars(tmp_path / "run", range(2)).close()
    with pytest.raises(FileExistsError, match="resume=True.*overwrite=True"):
        RunWriter(tmp_path / "run")
    with pytest.raises(ValueError, match="exclude each other"):
        RunWriter(tmp_path / "run", resume=True, overwrite=True)
    RunWriter(tmp_path / "run", overwrite=True).close()
    assert open_run(tmp_path / "run").scalars.empty
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no kdviz run"):
        RunWriter(tmp_path / "other", overwrite=True)
    with pytest.raises(ValueError, match="reserved"):
        RunWriter(tmp_path / "new", meta={"format_version": 9})


def test_reader_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a kdviz run"):
        open_run(tmp_path / "empty")
    RunWriter(tmp_path / "run").close()
    meta_path = tmp_path / "run" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=r"meta\.json has format_version"):
        open_run(tmp_path / "run")
    meta_path.write_text("{not json")
    with pytest.raises(ValueError, match=r"meta\.json is damaged"):
        open_run(tmp_path / "run")


def test_matrix_errors_and_bad_rows(tmp_path):
    writer = RunWriter(tmp_path / "run")
    with pytest.raises(ValueError, match="different lengths"):
        writer.append_rows("scalars", {"step": [1, 2], "name": ["a"]})
    with pytest.raises(ValueError, match="2 row and 3 column labels"):
        writer.append_matrix("m", 0, 0, np.zeros((2, 2)), ["a", "b"], ["x", "y", "z"])
    writer.append_matrix("m", 5, 0, np.eye(2), ["a", "b"], ["x", "y"], np.eye(2, dtype=bool), score=0.5)
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.append_rows("scalars", {"step": [1]})
    run = open_run(tmp_path / "run")
    m = run.matrix("m")
    assert m.step == 5 and m.row_tokens == ["a", "b"] and m.info == {"score": 0.5}
    np.testing.assert_array_equal(m.reference, np.eye(2, dtype=bool))
    with pytest.raises(KeyError, match="no matrix 'nope'"):
        run.matrix("nope")
    with pytest.raises(KeyError, match="samples at that step: \\[0\\]"):
        run.matrix("m", step=5, sample=3)


def test_nothing_in_the_store_unpickles(tmp_path, monkeypatch):
    writer = RunWriter(tmp_path / "run")
    writer.append_rows("tokens", {"step": [1], "token": ["x"], "v": np.array([0.5], dtype=np.float32)})
    writer.append_matrix("m", 1, 0, np.ones((1, 1)), ["a"], ["b"])
    writer.close()

    def refuse(*args, **kwargs):
        raise AssertionError("the run store must never unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    run = open_run(tmp_path / "run")
    assert run.tokens()["token"].tolist() == ["x"] and run.matrix("m").values.shape == (1, 1)
    assert {p.suffix for p in (tmp_path / "run").iterdir()} == {".json", ".kdr"}
