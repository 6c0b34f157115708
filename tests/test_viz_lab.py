"""`kdviz lab`'s JupyterLab defaults: merged into the environment's overrides, other entries kept; into the user's
settings when the environment is read-only."""

import errno
import json

import pytest

from kdviz.viz import lab
from kdviz.viz.lab import LAB_SETTINGS, install_lab_settings, overrides_path, user_settings_path


def test_install_merges_into_existing_overrides(tmp_path):
    path = overrides_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"other:plugin": {"x": 1}, "@jupyter-widgets/jupyterlab-manager:plugin": {"y": 2}}))
    assert install_lab_settings(tmp_path) == [path]
    written = json.loads(path.read_text())
    assert written["other:plugin"] == {"x": 1}
    assert written["@jupyter-widgets/jupyterlab-manager:plugin"] == {"y": 2, "saveState": True}
    install_lab_settings(tmp_path)  # idempotent
    assert json.loads(path.read_text()) == written
    assert set(LAB_SETTINGS) <= set(written)


def test_a_broken_overrides_file_is_named(tmp_path):
    path = overrides_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="overrides.json"):
        install_lab_settings(tmp_path)


def test_a_read_only_environment_falls_back_to_the_user_settings(tmp_path, monkeypatch):
    prefix, user = tmp_path / "env", tmp_path / "user"
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(user))
    write = lab._write

    def read_only_prefix(path, settings):  # what a read-only installation answers (root could write anyway)
        if prefix in path.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        write(path, settings)

    monkeypatch.setattr(lab, "_write", read_only_prefix)
    (path,) = install_lab_settings(prefix)
    assert path == user / "@jupyter-widgets" / "jupyterlab-manager" / "plugin.jupyterlab-settings"
    assert path == user_settings_path("@jupyter-widgets/jupyterlab-manager:plugin")
    assert json.loads(path.read_text()) == {"saveState": True}
    path.write_text(json.dumps({"saveState": False, "other": 1}))  # the user's own choice is kept
    install_lab_settings(prefix)
    assert json.loads(path.read_text()) == {"saveState": False, "other": 1}
    monkeypatch.setattr(lab, "_write", lambda path, settings: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError, match="full"):  # any other failure is not hidden
        install_lab_settings(prefix)
