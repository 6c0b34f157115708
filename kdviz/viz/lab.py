"""JupyterLab settings kdviz's views rely on, written as the environment's defaults by ``kdviz lab``.

``saveState``: the notebook stores the widgets' state when it is saved, so a reopened notebook shows its
dashboards (their figures are plotly outputs inside ``Output`` widgets) instead of "Error displaying widget:
model not found". The file is the environment's ``share/jupyter/lab/settings/overrides.json``: a user's own
settings still win. When the environment cannot be written (a read-only or system-wide installation), the
settings go to the user's own JupyterLab settings instead (``~/.jupyter/lab/user-settings``, or
``$JUPYTERLAB_SETTINGS_DIR``), where a value the user set is kept.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

LAB_SETTINGS = {"@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True}}


def overrides_path(prefix: str | Path = sys.prefix) -> Path:
    return Path(prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"


def user_settings_path(plugin: str) -> Path:
    """The user's settings file of ``plugin`` (``"package:name"``), where JupyterLab's settings editor writes."""
    from jupyter_core.paths import jupyter_config_dir

    root = os.environ.get("JUPYTERLAB_SETTINGS_DIR") or Path(jupyter_config_dir()) / "lab" / "user-settings"
    package, name = plugin.split(":")
    return Path(root) / package / f"{name}.jupyterlab-settings"


def install_lab_settings(prefix: str | Path = sys.prefix) -> list[Path]:
    """Merge :data:`LAB_SETTINGS` into the overrides file of the environment at ``prefix`` (other entries are
    kept) or, where the environment cannot be written, into the user's settings (a value the user set wins).
    Returns the files written."""
    path = overrides_path(prefix)
    try:
        current = _read(path)
        for plugin, values in LAB_SETTINGS.items():
            current[plugin] = {**current.get(plugin, {}), **values}
        _write(path, current)
        return [path]
    except OSError as error:
        if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
    written = []
    for plugin, values in LAB_SETTINGS.items():
        written.append(user_settings_path(plugin))
        _write(written[-1], {**values, **_read(written[-1])})
    return written


def _read(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or remove it") from None


def _write(path: Path, settings: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2), encoding="utf-8")
