"""Exception type for every data-loading problem in :mod:`opzo.data`."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(Exception):
    """A dataset file is missing, corrupt, incomplete or inconsistent, or a name is unknown.

    The message always says what was expected, what was found and what the user can do about it
    (for example where to obtain the official files: opzo never downloads data).
    """
