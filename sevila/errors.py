"""The one base class for mistakes in what a user gave (a file, an argument, a setting, a video).

`sevila` prints such an error as one line `sevila COMMAND: error: <message>` and exits 2; any other exception is
a bug and keeps its traceback. Messages name the file (and line or row), the key or the video, and what is wrong.
"""
from __future__ import annotations


class UserError(Exception):
    """A bad input the user can fix; the message alone must say where and what."""


class BadArgument(UserError, ValueError):
    """An argument value that cannot work (too many options, more keyframes than frames, zero videos); a
    ValueError too, so Python callers catch it as they would any bad value."""
