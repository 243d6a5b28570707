"""File helpers shared by stage workers and the libraries they call (the dataset builder, the trainers)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Name the file in any OSError raised while writing it: a full disk (ENOSPC) or a file-size limit
    (EFBIG) from a plain write() carries no file name, and "which file" is the operator's first question."""
    try:
        yield
    except OSError as e:
        if getattr(e, "filename", None):
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
