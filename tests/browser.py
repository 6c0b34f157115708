"""The real browser harness shared by the browser tests and ``benchmarks/bench_dashboard_browser.py``:
Debian's Chromium driven by Playwright, a JupyterLab server on a free localhost port with kdviz's lab
settings, and the page-side snippets that find a notebook, run it and tell when it is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from kdviz.viz.lab import LAB_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SETTINGS = {
    # what `kdviz lab` sets: saved notebooks keep their widgets
    **{f"{plugin.replace(':', '/')}.jupyterlab-settings": values for plugin, values in LAB_SETTINGS.items()},
    # every cell rendered (no windowing, so every plot is in the page), no news fetched from the network
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root: Path, settings: Path) -> Iterator[str]:
    """A JupyterLab server rooted in ``root`` with :data:`SETTINGS` written under ``settings``; yields its URL."""
    for plugin, values in SETTINGS.items():
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / plugin).write_text(json.dumps(values))
    port = _free_port()
    log = open(root / "server.log", "w")
    env = {**os.environ, "KDVIZ_DATA": str(ROOT / "data"), "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            "--IdentityProvider.token=",
            "--allow-root",
            "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",
            f"--LabApp.workspaces_dir={settings / 'workspaces'}",
            "--ServerApp.open_browser=False",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"JupyterLab did not start: {(root / 'server.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def new_page(browser, errors: list[str]):
    """A page that collects console errors, page errors and failed HTTP responses into ``errors``."""
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    return page


PANEL = """const panel = Array.from(window.jupyterapp.shell.widgets('main'))
    .find(w => w.context && w.context.path === NAME && w.content && w.sessionContext);"""
DONE = """(NAME) => {
  PANEL
  if (!panel || !panel.sessionContext.session) return false;
  const kernel = panel.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  const failed = cells.find(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
  if (failed) {
    const error = failed.model.outputs.toJSON().find(o => o.output_type === 'error');
    return 'error in cell: ' + failed.model.sharedModel.getSource().slice(0, 200) + '\\n' + error.ename + ': ' +
      error.evalue;
  }
  return cells.every(c => c.model.executionCount !== null && c.model.executionCount !== undefined) && 'done';
}""".replace("PANEL", PANEL)
READY = """(NAME) => {
  if (!window.jupyterapp) return false;
  PANEL
  return !!(panel && panel.sessionContext.session && panel.sessionContext.session.kernel &&
            panel.sessionContext.session.kernel.status === 'idle');
}""".replace("PANEL", PANEL)
RUN_ALL = """(NAME) => {
  PANEL
  window.jupyterapp.shell.activateById(panel.id);
  window.jupyterapp.commands.execute('notebook:run-all-cells');  // not awaited: DONE polls for the end
}""".replace("PANEL", PANEL)


def open_notebook(page, url: str, name: str) -> None:
    """Open notebook ``name`` (no restored tabs) and wait for its kernel."""
    page.goto(f"{url}/lab/tree/{name}?reset", wait_until="domcontentloaded")
    page.wait_for_function(READY, arg=name, timeout=90_000, polling=500)


def run_all(page, name: str, timeout_ms: int) -> None:
    """Run every cell of the open notebook ``name`` and wait until all ran without an error."""
    page.evaluate(RUN_ALL, name)
    outcome = page.wait_for_function(DONE, arg=name, timeout=timeout_ms, polling=500).json_value()
    assert outcome == "done", outcome


def shutdown_kernels(url: str) -> None:
    """Stop every session's kernel, so each notebook runs alone."""
    with urllib.request.urlopen(f"{url}/api/sessions", timeout=10) as response:
        sessions = json.loads(response.read())
    for session in sessions:
        request = urllib.request.Request(f"{url}/api/sessions/{session['id']}", method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()
