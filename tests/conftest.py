"""Test-wide settings: in CI (CI=true) hypothesis draws the same examples on every run, so a red run is
reproducible; locally it explores new ones each time."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")
