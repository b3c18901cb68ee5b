"""Suite-wide settings: Hypothesis explores at random on a developer's machine, and replays a fixed
sequence in CI (``CI`` set, as ``.ci/run`` runs), so that a CI verdict depends on the code, not on the
draw. A failure found locally is a bug to fix; CI must not fail one submission in fifty by luck."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
