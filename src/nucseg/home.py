"""Where the user's own things live: ``$NUCSEG_HOME``, else ``~/.nucseg`` (corrections, fine-tuned models,
classifiers, streamed predictions, trash)."""

from __future__ import annotations

import os
from pathlib import Path


def nucseg_home() -> Path:
    """``$NUCSEG_HOME``, else ``~/.nucseg``."""
    return Path(os.environ.get("NUCSEG_HOME", Path.home() / ".nucseg"))
