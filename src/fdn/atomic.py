r"""Writing files so that a reader never sees half of one: a temporary file, then a rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "update_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, then renames it to ``path``.

    An interrupted or failing write leaves ``path`` as it was (absent, or the previous
    version) and removes the temporary file. The result gets the usual permissions (mkstemp
    makes 0600). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def update_json(path: str | os.PathLike, change: Callable[[dict], object]) -> dict:
    """Reads the JSON object at ``path`` (``{}`` when absent), calls ``change(obj)`` on it and
    writes it back atomically, holding an exclusive lock on ``path + ".lock"`` throughout
    (where the platform has ``fcntl``), so that two processes that each change their own
    keys both keep their change: a read at the start and a write at the end of a long job
    would drop what another wrote in between. Returns the object as written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:  # closing it unlocks
        try:
            import fcntl
        except ImportError:  # Windows: no lock, as before
            pass
        else:
            fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.is_file() else {}
        change(data)
        text = json.dumps(data, indent=2) + "\n"
        atomic_write(path, lambda tmp: tmp.write_text(text))
    return data
