"""JupyterLab settings kdviz's views rely on, written as the environment's defaults by ``kdviz lab``.

``saveState``: the notebook stores the widgets' state when it is saved, so a reopened notebook shows its
dashboards (their figures are plotly outputs inside ``Output`` widgets) instead of "Error displaying widget:
model not found". The file is the environment's ``share/jupyter/lab/settings/overrides.json``: a user's own
settings still win.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LAB_SETTINGS = {"@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True}}


def overrides_path(prefix: str | Path = sys.prefix) -> Path:
    return Path(prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"


def install_lab_settings(prefix: str | Path = sys.prefix) -> Path:
    """Merge :data:`LAB_SETTINGS` into the overrides file of the environment at ``prefix``; other entries are
    kept. Returns the file's path."""
    path = overrides_path(prefix)
    current = {}
    if path.exists():
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON ({error}); fix or remove it") from None
    for plugin, values in LAB_SETTINGS.items():
        current[plugin] = {**current.get(plugin, {}), **values}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2), encoding="utf-8")
    return path
