"""Atomic file writes and checked JSON reads.

Every file hither_fs puts in the root goes through :func:`atomic_write`: the
bytes are written to a temporary name in the same directory (carrying host,
pid and a random part, so writers on different nodes never collide), flushed
to disk, then renamed over the final name. A reader therefore sees either the
old file, the new file, or no file - never half of one.

Standard library only: this module also runs inside job containers.
"""

import json
import os
import socket
import stat
import uuid
from typing import Any, Callable, Optional

HOST = socket.gethostname()

#: fsync every file before its rename. The rename alone already guarantees
#: that no reader - on this host or over NFS - ever sees half a file, even if
#: the writer is killed; fsync adds survival of a machine crash on a local
#: disk, at about a millisecond per file. ``HITHER_FS_FSYNC=1`` turns it on.
FSYNC = os.environ.get("HITHER_FS_FSYNC", "0") not in ("", "0", "false", "no")


class CorruptFileError(Exception):
    """A file in the root exists but cannot be what it claims to be."""

    def __init__(self, path: str, problem: str):
        super().__init__("{}: {}".format(path, problem))
        self.path = path
        self.problem = problem


def temp_name(path: str) -> str:
    """A temporary sibling of ``path`` that no other writer can pick."""
    directory, base = os.path.split(path)
    tag = "{}.{}.{}".format(HOST, os.getpid(), uuid.uuid4().hex[:8])
    return os.path.join(directory, ".{}.tmp-{}".format(base, tag))


def group_shared(directory: str) -> bool:
    """Whether ``directory`` belongs to a group-shared root (its directories are setgid)."""
    try:
        return bool(os.stat(directory).st_mode & stat.S_ISGID)
    except OSError:
        return False


def file_mode(directory: str) -> int:
    """Permission bits for a new file in ``directory``: the user's, and the group's
    in a group-shared root - never anyone else's, whatever the umask."""
    return 0o660 if group_shared(directory) else 0o600


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(f)`` on a temporary file, then rename it to ``path``.

    On any failure (including a full disk) the temporary file is removed and
    ``path`` is left as it was.
    """
    tmp = temp_name(path)
    try:
        with open(tmp, mode) as f:
            os.fchmod(f.fileno(), file_mode(os.path.dirname(path)))
            write(f)
            if FSYNC:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_json(path: str, obj: Any) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    write_bytes(path, data)


def read_json(path: str, default: Any = None, missing_ok: bool = False) -> Any:
    """Read a JSON file; a missing file gives ``default`` if ``missing_ok``.

    A file that exists but does not parse raises :class:`CorruptFileError`
    naming the path, so damage is reported rather than used.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if missing_ok:
            return default
        raise
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(path, "not valid JSON ({})".format(exc)) from None


def makedirs(path: str) -> None:
    """Create ``path`` and its missing parents, whatever the umask: 0700, or
    setgid 2770 below a group-shared root's (setgid) directories."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        makedirs(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        if os.path.isdir(path):
            return
        raise
    os.chmod(path, 0o2770 if group_shared(parent) else 0o700)


def remove_quietly(path: str) -> bool:
    """Unlink ``path``; return whether this call removed it."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def read_text_tail(path: str, limit: Optional[int] = None) -> str:
    try:
        with open(path, "rb") as f:
            if limit is not None:
                size = os.fstat(f.fileno()).st_size
                if size > limit:
                    f.seek(size - limit)
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
