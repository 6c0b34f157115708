"""`kdviz lab`'s JupyterLab defaults: merged into the environment's overrides, other entries kept."""

import json

import pytest

from kdviz.viz.lab import LAB_SETTINGS, install_lab_settings, overrides_path


def test_install_merges_into_existing_overrides(tmp_path):
    path = overrides_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"other:plugin": {"x": 1}, "@jupyter-widgets/jupyterlab-manager:plugin": {"y": 2}}))
    assert install_lab_settings(tmp_path) == path
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
