"""Old names that still work: each warns once per process and names its replacement.

This module is at the lowest layer (it imports nothing of opzo), so that any module may use it.
"""

from __future__ import annotations

import warnings

#: the old names warned about in this process
_warned: set[str] = set()


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """A :class:`FutureWarning` (shown by default) that ``old`` is now ``new``, the first time
    ``old`` is used in this process; later uses are silent."""
    if old in _warned:
        return
    _warned.add(old)
    warnings.warn(f"{old} is an old name: use {new} (the old name keeps working)",
                  FutureWarning, stacklevel=stacklevel)
