"""The environment of every git process opsledger starts.

Its own module: the commit lock, which gitrepo builds on, starts git too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every git process opsledger starts.

    History is evidence: `git replace` objects must not rewrite what is read (a local
    replacement would turn a failed run's record into a success for every reader).
    """
    return {**os.environ, **(extra or {}), "GIT_NO_REPLACE_OBJECTS": "1"}
