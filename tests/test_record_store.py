"""The run store: frame format, damage handling (warning + skip), metadata checks, resume/overwrite, no pickle."""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import pickle
import types
import warnings
import zlib

import numpy as np
import pytest
import torch

from kdviz.record import FORMAT_VERSION, TornRecordWarning, frames, open_run, store
from kdviz.record.frames import MAGIC, PREFIX, Frame, Problem, encode, scan
from kdviz.record.store import RecordWriteError, RunWriter


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


@contextlib.contextmanager
def fill_disk_after(monkeypatch, budget: int):
    """The run store's writes see a disk that is full after ``budget`` more bytes (a write then stops
    part-way, and every later one fails with ENOSPC), like a real full file system."""
    left = [budget]

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            n = min(len(data), left[0])
            if n == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= n
            return self.f.write(memoryview(data)[:n])

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    with monkeypatch.context() as m:
        m.setattr(store, "open", lambda *a, **k: Full(builtins.open(*a, **k)), raising=False)
        yield left


def test_a_full_disk_names_the_run_keeps_earlier_records_and_leaves_no_torn_frame(tmp_path, monkeypatch):
    _write_scalars(tmp_path / "run", range(3)).close()
    with fill_disk_after(monkeypatch, 10**6) as left:
        writer = RunWriter(tmp_path / "run", resume=True)
        left[0] = 30
        writer.append_rows("scalars", {"step": [3], "name": ["a"], "value": [3.0], "wall_time": [0.0]})
        with pytest.raises(RecordWriteError, match=f"run directory {tmp_path / 'run'}: the disk is full"):
            writer.flush()
        with pytest.raises(RecordWriteError, match="the disk is full"):
            writer.update_meta(note="x")
        with pytest.warns(RuntimeWarning, match="records buffered since the last flush are lost"):
            writer.close()  # does not raise
    assert not list((tmp_path / "run").glob(".*.tmp"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = open_run(tmp_path / "run")
    assert sorted(run.scalars["step"].unique()) == [0, 1, 2]


def test_a_replay_on_a_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    writer = _write_scalars(tmp_path / "run", range(1))
    monkeypatch.setattr(store, "save_file", full)
    with pytest.raises(RecordWriteError, match="replay r.safetensors to the run directory .*: the disk is full"):
        writer.save_tensors("r", {"x": torch.zeros(2)}, {})
    assert not list((tmp_path / "run" / "replay").iterdir())


def test_a_failed_flush_is_retried_by_the_next(tmp_path, monkeypatch):
    _write_scalars(tmp_path / "run", range(1)).close()
    with fill_disk_after(monkeypatch, 10**6) as left:
        writer = RunWriter(tmp_path / "run", resume=True)
        writer.append_rows("scalars", {"step": [1], "name": ["a"], "value": [1.0], "wall_time": [0.0]})
        left[0] = 10
        with pytest.raises(RecordWriteError):
            writer.flush()
        left[0] = 10**6  # space freed
        writer.flush()
    writer.close()
    assert sorted(open_run(tmp_path / "run").scalars["step"].unique()) == [0, 1]


def _crafted_frames():
    """Frames whose checksums verify but whose content is not what a run holds."""
    yield encode({"kind": "table"})  # no columns
    yield encode({"columns": ["step"], "text": {}})  # column missing
    yield encode({"columns": ["a", "b"], "text": {"b": ["x"]}}, {"a": np.arange(2)})  # lengths differ
    yield encode({"columns": ["a"], "text": {}}, {"a": np.zeros((2, 2))})  # 2-d column
    yield encode({"columns": ["a"], "text": {}, "session": "x"}, {"a": np.arange(2)})
    good = encode({"columns": ["a"], "text": {}}, {"a": np.arange(2)})
    header_len = PREFIX.unpack_from(good)[1]
    header = json.loads(good[PREFIX.size : PREFIX.size + header_len])
    body = good[PREFIX.size + header_len :]
    for bad in ({"attrs": [], "arrays": []}, {"attrs": {}, "arrays": {}}, [1],
                {**header, "arrays": [{**header["arrays"][0], "shape": [-1]}]},
                {**header, "arrays": [{**header["arrays"][0], "shape": [10**6]}]},
                {**header, "arrays": [{**header["arrays"][0], "dtype": "O"}]},
                {**header, "arrays": [{**header["arrays"][0], "dtype": "nonsense"}]},
                {**header, "arrays": [{**header["arrays"][0], "offset": "0"}]},
                {**header, "arrays": ["a"]}):
        raw = json.dumps(bad).encode()
        yield PREFIX.pack(MAGIC, len(raw), len(body), zlib.crc32(raw + body)) + raw + body
    for raw in (b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000):  # not UTF-8; nested too deeply
        yield PREFIX.pack(MAGIC, len(raw), 0, zlib.crc32(raw)) + raw


def test_crafted_checksum_valid_frames_are_skipped_with_a_warning(tmp_path):
    _write_scalars(tmp_path / "run", range(2)).close()
    crafted = list(_crafted_frames())
    matrix_bad = [encode({"name": "m", "step": "0", "sample": 0}, {"values": np.zeros((1, 1))}),
                  encode({"name": "m", "step": 0, "sample": 0, "row_tokens": ["a"], "col_tokens": []},
                         {"values": np.zeros((1, 1))})]
    with open(tmp_path / "run" / "scalars.kdr", "ab") as f:
        f.write(b"".join(crafted))
    (tmp_path / "run" / "matrices.kdr").write_bytes(b"".join(matrix_bad))
    _write_scalars(tmp_path / "more", [7]).close()
    with open(tmp_path / "run" / "scalars.kdr", "ab") as f:
        f.write((tmp_path / "more" / "scalars.kdr").read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = open_run(tmp_path / "run")
    messages = [str(w.message) for w in caught]
    assert all(issubclass(w.category, TornRecordWarning) for w in caught)
    assert len(messages) == len(crafted) + len(matrix_bad)
    assert all("skipped a" in m and "at byte" in m and ".kdr" in m for m in messages)
    assert sorted(run.scalars["step"].unique()) == [0, 1, 7] and run.matrix_names() == []


def test_resync_after_a_bad_frame_is_linear(monkeypatch):
    """Work counted, not timed: bytes checksummed and register steps grow with the size, not its square."""
    def crafted(size):
        """Candidate frames everywhere, each claiming to run to the end of the file, none verifying."""
        out = bytearray()
        while len(out) < size - PREFIX.size:
            out += PREFIX.pack(MAGIC, 0, size - len(out) - PREFIX.size, 0)
        return bytes(out) + encode({"k": 1})

    work = {"bytes": 0, "steps": 0}

    def crc32(data, value=0):
        work["bytes"] += len(data)
        return zlib.crc32(data, value)

    def apply(tables, v):
        work["steps"] += 1
        return real_apply(tables, v)

    real_apply = frames._apply
    frames._zero_tables()  # built once, not part of a scan's work
    monkeypatch.setattr(frames, "zlib", types.SimpleNamespace(crc32=crc32))
    monkeypatch.setattr(frames, "_apply", apply)

    def cost(size):
        work.update(bytes=0, steps=0)
        items = list(scan(crafted(size)))
        assert isinstance(items[-1], Frame) and items[-1].attrs == {"k": 1}
        return dict(work)

    small, large = cost(128 * 1024), cost(512 * 1024)
    # 4x the size: linear is ~4x (the register steps carry a log factor), quadratic 16x
    assert large["bytes"] <= 4.5 * small["bytes"] and large["bytes"] <= 4 * 512 * 1024
    assert large["steps"] <= 6 * small["steps"]


@pytest.mark.parametrize("content", [b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b'{"format": "kdviz-run"}'])
def test_bad_meta_is_a_clear_error_naming_the_file(tmp_path, content):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "meta.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"meta\.json"):
        open_run(tmp_path / "run")


@pytest.mark.parametrize("version", [True, -5, 0, 1.0, "1"])
def test_invalid_format_versions_are_refused(tmp_path, version):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "meta.json").write_text(json.dumps({"format": "kdviz-run", "format_version": version}))
    with pytest.raises(ValueError, match="invalid format_version"):
        open_run(tmp_path / "run")


def test_symlinks_never_lead_writes_outside_the_run(tmp_path):
    real = tmp_path / "real"
    _write_scalars(real, range(2)).close()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    _write_scalars(link, [5], overwrite=True).close()  # a linked run directory may be replaced
    assert link.is_symlink() and open_run(real).scalars["step"].unique().tolist() == [5]
    outside = tmp_path / "outside.kdr"
    outside.write_bytes(b"precious")
    (real / "scalars.kdr").unlink()
    (real / "scalars.kdr").symlink_to(outside)
    with pytest.raises(ValueError, match="symbolic link"):
        RunWriter(real, resume=True)
    (real / "scalars.kdr").unlink()
    meta = real / "meta.json"
    (tmp_path / "outside.json").write_text(meta.read_text())
    meta.unlink()
    meta.symlink_to(tmp_path / "outside.json")
    with pytest.raises(ValueError, match="symbolic link"):
        RunWriter(real, resume=True)
    assert outside.read_bytes() == b"precious" and meta.is_symlink()
