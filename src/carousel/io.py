"""Files a user owns: one atomic writer and one figure saver.

:func:`atomic_write` never leaves a half-written file: the bytes go to a temporary file in the
same folder, are fsynced, renamed over the target, and the folder is fsynced, so a kill at any
moment leaves the old file or the new one.  The new file gets an ordinary file's mode (0666
less the umask), not ``mkstemp``'s 0600.

:func:`pyplot` sets matplotlib up once (the Agg backend: no display needed) and
:func:`save_figure` writes a figure through :func:`atomic_write` and closes it.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some file systems cannot open a folder; the rename is done anyway
        return path
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (set once, before pyplot is first imported)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, **savefig: Any) -> Path:
    """Write matplotlib figure ``fig`` as PNG to ``path`` atomically and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight", **savefig)
    finally:
        pyplot().close(fig)
    return atomic_write(path, buf.getvalue())


__all__ = ["atomic_write", "pyplot", "save_figure"]
