"""User-facing errors and the helpers that word them."""
from __future__ import annotations

import difflib


class UserError(Exception):
    """A problem with the user's input; the CLI prints str(e) as one line and exits 2."""


class StorageError(Exception):
    """The run directory cannot be written (disk full, read-only, no permission). The CLI prints
    str(e) as one line and exits 1; every record already written is intact, so the run resumes."""


STORAGE_ERRNOS = {28: "no space left on the device", 122: "disk quota exceeded", 13: "permission denied",
                  1: "operation not permitted", 30: "read-only file system"}


def did_you_mean(word, options) -> str:
    """' (did you mean 'l2'?)' for a near miss, else ' (known: a, b, c)'."""
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else f" (known: {', '.join(map(str, options))})"
