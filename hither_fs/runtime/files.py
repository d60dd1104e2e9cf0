"""Atomic file writes and checked reads, with as few metadata operations as possible.

Every file with content that hither_fs puts in the root becomes visible
whole: it is written under a temporary name in the same directory (carrying
host, pid and a random part, so writers on different nodes never collide)
and renamed over its final name, or written inside a directory that is not
yet published (see :func:`hither_fs.protocol.submit`). A reader therefore
sees the old file, the new file, or no file - never half of one. Empty marker
files (tickets, requests) are created exclusively (``O_EXCL``), which is
atomic on every shared filesystem.

On a cluster filesystem each open, stat, rename or directory listing is a
round trip to a metadata server, so this module avoids the hidden ones: files
are opened with :func:`os.open` (no extra ``fstat`` or terminal check), modes
are given at creation instead of by a later ``chmod`` wherever the umask
cannot spoil them, and parent directories are made only when a create fails
for want of them. Reads open by name every time (close-to-open consistency:
an NFS client revalidates a file when it opens it, not when it stats it) and
refuse anything that is not a regular file, so a FIFO or a symlink planted in
the root cannot hang or redirect a reader.

Standard library only: this module also runs inside job containers.
"""

import ctypes
import errno
import json
import os
import shutil
import socket
import stat
import sys
import time
import uuid
from typing import Any, Callable, Dict, Optional, Tuple

HOST = socket.gethostname()

#: fsync every file before its rename. The rename alone already guarantees
#: that no reader - on this host or over NFS - ever sees half a file, even if
#: the writer is killed; fsync adds survival of a machine crash on a local
#: disk, at about a millisecond per file. ``HITHER_FS_FSYNC=1`` turns it on.
FSYNC = os.environ.get("HITHER_FS_FSYNC", "0") not in ("", "0", "false", "no")

_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

#: Directories known to be group-shared or private, by path prefix (see :func:`register_tree`).
_trees: Dict[str, bool] = {}


class CorruptFileError(Exception):
    """A file in the root exists but cannot be what it claims to be."""

    def __init__(self, path: str, problem: str):
        super().__init__("{}: {}".format(path, problem))
        self.path = path
        self.problem = problem


class LinkError(CorruptFileError):
    """A symbolic link where hither_fs wrote a file or a directory: never followed."""


#: What reading and using a damaged record can raise: reported, never a crash (fsck, gc).
DAMAGE_ERRORS = (OSError, CorruptFileError, ValueError, KeyError, TypeError, AttributeError, RecursionError)


def temp_name(path: str) -> str:
    """A temporary sibling of ``path`` that no other writer can pick."""
    directory, base = os.path.split(path)
    tag = "{}.{}.{}".format(HOST, os.getpid(), uuid.uuid4().hex[:8])
    return os.path.join(directory, ".{}.tmp-{}".format(base, tag))


# -- modes -------------------------------------------------------------------

def register_tree(path: str, group_shared: bool) -> None:
    """Say once whether the tree at ``path`` (a root, a cache directory) is
    group-shared, so that new files need no ``stat`` of their directory."""
    _trees[os.path.abspath(path)] = group_shared


def group_shared(directory: str) -> bool:
    """Whether ``directory`` belongs to a group-shared tree (its directories are setgid)."""
    best = None
    for prefix in _trees:
        if (directory == prefix or directory.startswith(prefix + os.sep)) and (best is None or len(prefix) > len(best)):
            best = prefix
    if best is not None:
        return _trees[best]
    try:
        return bool(os.stat(directory).st_mode & stat.S_ISGID)
    except OSError:
        return False


def file_mode(directory: str) -> int:
    """Permission bits for a new file in ``directory``: the user's, and the group's
    in a group-shared tree - never anyone else's, whatever the umask."""
    return 0o660 if group_shared(directory) else 0o600


def dir_mode(directory: str) -> int:
    return 0o2770 if group_shared(directory) else 0o700


def _fix_mode(fd_or_path: Any, mode: int) -> None:
    """A umask may have taken the group bits away from a group-shared file: put them back.
    (0600 and 0700 need nothing: a umask can only remove bits, and the user's are never
    removed by a sane one.)"""
    if mode & 0o070:
        if isinstance(fd_or_path, int):
            os.fchmod(fd_or_path, mode)
        else:
            os.chmod(fd_or_path, mode)


# -- writing -------------------------------------------------------------------

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_new(path: str, data: bytes = b"") -> None:
    """Create ``path``, which must not exist, with ``data``: for empty markers, and for
    files inside a directory that nobody can see yet. Raises ``FileExistsError``."""
    mode = file_mode(os.path.dirname(path))
    fd = os.open(path, _CREATE_FLAGS, mode)
    try:
        _fix_mode(fd, mode)
        if data:
            _write_all(fd, data)
        if FSYNC:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(path)
        raise
    os.close(fd)


def overwrite(path: str, data: bytes) -> None:
    """Replace the content of ``path``, a private file that only this process can name
    (a temporary file, or a token this process has just taken)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        _write_all(fd, data)
        if FSYNC:
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(f)`` on a temporary file, then rename it to ``path``.

    On any failure (including a full disk) the temporary file is removed and
    ``path`` is left as it was.
    """
    tmp = temp_name(path)
    perm = file_mode(os.path.dirname(path))
    try:
        fd = os.open(tmp, _CREATE_FLAGS, perm)
        with os.fdopen(fd, mode) as f:
            _fix_mode(fd, perm)
            write(f)
            if FSYNC:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def copy_new(src: str, dst: str) -> None:
    """Copy the file ``src`` to ``dst``, which must not exist, with the bits of a new file in
    ``dst``'s directory (:func:`file_mode`), never those the umask leaves."""
    mode = file_mode(os.path.dirname(dst))
    fd = os.open(dst, _CREATE_FLAGS, mode)
    try:
        _fix_mode(fd, mode)
        with open(src, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                _write_all(fd, chunk)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes) -> None:
    """``data`` into ``path`` by temporary file and rename: two metadata operations."""
    tmp = temp_name(path)
    try:
        write_new(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def write_json(path: str, obj: Any) -> None:
    write_bytes(path, dumps(obj))


# -- reading -------------------------------------------------------------------

class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_RESOLVE_NO_SYMLINKS = 0x04
_READ_HOW = _OpenHow(_READ_FLAGS, 0, _RESOLVE_NO_SYMLINKS)
_HOW_SIZE = ctypes.sizeof(_OpenHow)
_OPENAT2 = {"x86_64": 437, "aarch64": 437, "ppc64le": 437, "s390x": 437}.get(os.uname().machine) \
    if sys.platform.startswith("linux") else None
_guarded: Dict[str, Optional[int]] = {}  # directory -> its descriptor (opened when first used)
_libc: Any = None


def guard_tree(path: str) -> None:
    """Reads below ``path`` (a root's ``jobs/``) refuse a symbolic link on the way (see
    :func:`_open_in_tree`). Elsewhere in a root a link is allowed - a ``store/`` moved to
    a bigger disk and linked back, say."""
    path = os.path.abspath(path)
    _close_guard(path)
    _guarded[path] = None


def _close_guard(tree: str) -> None:
    fd = _guarded.pop(tree, None)
    if fd is not None:
        os.close(fd)


def _open_in_tree(path: str) -> Optional[int]:
    """Open ``path`` for reading with ``openat2(RESOLVE_NO_SYMLINKS)`` relative to the
    guarded tree (a root's ``jobs/``) it lies in: one system call that refuses a symbolic
    link anywhere below the tree - a job directory replaced by a link out of the root,
    say - where an ``lstat`` of each directory would cost a round trip each. None where
    that cannot be done (not in a guarded tree, or no ``openat2`` here): the caller then
    opens the plain way, after its own ``lstat`` (see :func:`can_refuse_linked_dirs`)."""
    if not _guarded or not can_refuse_linked_dirs():
        return None
    tree = next((t for t in _guarded if path.startswith(t + os.sep)), None)
    if tree is None:
        return None
    name = os.fsencode(path[len(tree) + 1:])
    for fresh in (False, True):
        tree_fd = _guarded.get(tree)
        if tree_fd is None:
            try:
                tree_fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
            _guarded[tree] = tree_fd
        while True:
            fd = _libc.syscall(_OPENAT2, tree_fd, name, ctypes.byref(_READ_HOW), _HOW_SIZE)
            err = ctypes.get_errno() if fd < 0 else 0
            if err != errno.EINTR:  # (ctypes does not retry an interrupted call as os.open does)
                break
        if fd >= 0:
            return fd
        if err in (errno.ENOENT, errno.ESTALE) and not fresh and _tree_replaced(tree, tree_fd):
            _guarded[tree] = None  # the root was made anew at its path: look there
            os.close(tree_fd)
            continue
        raise OSError(err, os.strerror(err), path)
    raise AssertionError("unreachable")


def _tree_replaced(tree: str, fd: int) -> bool:
    try:
        held, there = os.fstat(fd), os.stat(tree)
    except OSError:
        return True
    return (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino)


def can_refuse_linked_dirs() -> bool:
    """Whether reads in guarded trees refuse symbolic links on the way (see
    :func:`_open_in_tree`); if not, callers look at directories themselves."""
    global _libc, _OPENAT2
    if _OPENAT2 is not None and _libc is None:  # once: does this kernel (and sandbox) allow openat2?
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.syscall.restype = ctypes.c_long
            how = _OpenHow(_READ_FLAGS | os.O_DIRECTORY, 0, _RESOLVE_NO_SYMLINKS)
            fd = _libc.syscall(_OPENAT2, -100, b"/", ctypes.byref(how), ctypes.sizeof(how))  # AT_FDCWD
        except (OSError, AttributeError):
            fd = -1
        if fd < 0:
            _OPENAT2 = None
        else:
            os.close(fd)
    return _OPENAT2 is not None


def open_regular(path: str, limit: Optional[int] = None) -> int:
    """Open the regular file ``path`` for reading; return the descriptor.

    A symlink (below a root's ``jobs/``: anywhere on the way), FIFO, device or
    directory raises :class:`CorruptFileError` (never a hang, never a read
    outside the root); so does a file of more than ``limit`` bytes (damage,
    not data).
    """
    return _open_regular(path, limit)[0]


def _open_regular(path: str, limit: Optional[int]) -> Tuple[int, os.stat_result]:
    """:func:`open_regular`, and the file's ``fstat``."""
    try:
        fd = _open_in_tree(path)
        if fd is None:
            fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkError(path, "is a symbolic link, or lies below one, where hither_fs wrote a file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptFileError(path, "is not a regular file (mode {:o})".format(st.st_mode))
        if limit is not None and st.st_size > limit:
            raise CorruptFileError(path, "is {} bytes, more than the {} a record may have".format(st.st_size, limit))
        return fd, st  # (O_NONBLOCK means nothing to a regular file: left on)
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str, limit: Optional[int] = None) -> Tuple[bytes, os.stat_result]:
    """The bytes of the regular file ``path`` (see :func:`open_regular`) and its ``fstat``,
    in one open. Records are replaced by a rename, never changed in place, so the
    ``fstat`` taken when the file was opened is that of the bytes read."""
    fd, st = _open_regular(path, limit)
    try:
        return _read_rest(fd, st.st_size), st
    finally:
        os.close(fd)


def _read_rest(fd: int, size: int = -1) -> bytes:
    """The rest of ``fd``, ``size`` bytes as far as its ``fstat`` knows. A read allocates
    what it asks for before it reads (a megabyte costs an mmap, page faults and an munmap),
    so it asks for one byte more than that, and a read of a regular file that returns less
    than asked is at the end: one call for a file that still has its size. (A file that
    grew meanwhile is read on; one cut short is the caller's to judge.)"""
    chunks = []
    got = 0
    ask = size + 1 if 0 <= size < 1 << 20 else 1 << 20
    while True:
        chunk = os.read(fd, ask)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        got += len(chunk)
        if 0 <= size <= got and len(chunk) < ask:  # (a network filesystem may read short before the end)
            return b"".join(chunks)
        ask = max(size - got + 1, 1 << 16) if 0 <= size - got < 1 << 20 else 1 << 20


def parse_json(path: str, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptFileError(path, "not valid JSON ({})".format(exc)) from None


#: A record (spec, state, cache entry, heartbeat...) bigger than this is damage, not data:
#: big values go to the store.
RECORD_LIMIT = 256 << 20


#: Pauses before JSON that ends too early is read again, and then called damaged. A node
#: may read a file just renamed into place with the length of the file it replaced,
#: until its attribute cache expires (a FUSE client's: a second by default): the record
#: then looks cut short, and reads whole a moment later.
REREAD_PAUSES = (0.1, 0.4, 1.2)


def cut_short(data: bytes) -> bool:
    """Whether JSON that does not parse ends too early (rather than being wrong inside)."""
    try:
        json.loads(data.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        return exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated")
    except (ValueError, RecursionError):
        return False
    return False


_damaged: Dict[str, Tuple[int, int, int]] = {}  # path -> (inode, mtime, size) of a record found cut short for good


def read_record(path: str, limit: Optional[int] = None) -> Tuple[Any, os.stat_result]:
    """The parsed JSON of ``path`` and its ``fstat``; see :func:`read_json`."""
    for pause in REREAD_PAUSES + (None,):
        data, st = read_bytes(path, limit=RECORD_LIMIT if limit is None else limit)
        try:
            return parse_json(path, data), st
        except CorruptFileError:
            seen = _damaged.get(path) == (st.st_ino, st.st_mtime_ns, st.st_size)
            if pause is None or seen or not cut_short(data):  # damaged, not cut short: say so now
                if pause is None:
                    if len(_damaged) > 1000:
                        _damaged.clear()
                    _damaged[path] = (st.st_ino, st.st_mtime_ns, st.st_size)  # once is enough to wait for it
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


def read_json(path: str, default: Any = None, missing_ok: bool = False) -> Any:
    """Read a JSON file; a missing file gives ``default`` if ``missing_ok``.

    A file that exists but does not parse, or is over :data:`RECORD_LIMIT`, raises
    :class:`CorruptFileError` naming the path, so damage is reported rather than used
    (JSON that ends too early is read again first: see :data:`REREAD_PAUSES`).
    """
    try:
        return read_record(path)[0]
    except FileNotFoundError:
        if missing_ok:
            return default
        raise


# -- directories -------------------------------------------------------------------

def rename_dir_unless_there(tmp: str, final: str) -> bool:
    """Rename the directory ``tmp`` to ``final``; if another process put a directory there
    first, theirs stays and ``tmp`` is removed. Whether ours is the one there."""
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        if not os.path.isdir(final):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def rename_unless_there(tmp: str, final: str) -> bool:
    """Put the file or directory ``tmp`` at ``final`` unless another process put one there
    first (theirs stays, ``tmp`` is removed); whether ours is the one there. A file goes by
    hard link, which never replaces (``rename`` of a file would); where the file system has
    no hard links, by rename after all."""
    if os.path.isdir(tmp):
        return rename_dir_unless_there(tmp, final)
    try:
        os.link(tmp, final)
    except FileExistsError:
        remove_quietly(tmp)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        os.rename(tmp, final)
        return True
    remove_quietly(tmp)
    return True


def makedirs(path: str) -> None:
    """Create ``path`` and its missing parents, whatever the umask: 0700, or
    setgid 2770 below a group-shared tree. One ``mkdir`` when only ``path`` is missing.

    A ``path`` that exists already is fine - even if this node's cache still
    says otherwise (another node made it a moment ago): what is really there
    shows when it is used."""
    try:
        mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if not parent or parent == path:
            raise
        makedirs(parent)
        try:
            mkdir(path)
        except FileExistsError:
            pass


def mkdir(path: str) -> None:
    """One ``mkdir`` with the tree's mode (raises ``FileExistsError``/``FileNotFoundError``)."""
    mode = dir_mode(os.path.dirname(path))
    os.mkdir(path, mode)
    _fix_mode(path, mode)


#: How long a node may go on believing, from its cache, that a directory another
#: node has just made does not exist (NFS caches such answers for seconds too).
STALE_VIEW_SECONDS = 5.0


def with_parents(create: Callable[[], Any], directory: str) -> Any:
    """Run ``create()``, which makes a new file or directory in ``directory``; if it fails
    because ``directory`` is missing, make it and try again. Directories are made only
    when needed, so the common case costs nothing extra.

    If ``directory`` turns out to exist already (another node made it) while this node
    still remembers it as missing, the create is tried again for a few seconds, until
    the node's cache has caught up.
    """
    try:
        return create()
    except FileNotFoundError:
        makedirs(directory)
    delay, waited = 0.01, 0.0
    while True:
        try:
            return create()
        except FileNotFoundError:
            if waited >= STALE_VIEW_SECONDS:
                raise
            time.sleep(delay)
            waited += delay
            delay = min(0.5, delay * 2)


def fs_now(directory: str) -> float:
    """The time by the clock that stamps files in ``directory``: the mtime of a file made
    there just now (this node's clock if the directory cannot be written).

    Ages of files in a shared root are measured against this, never against the
    clock of the node that looks: a node whose clock is hours ahead would otherwise
    judge live files hours old.
    """
    path = temp_name(os.path.join(directory, "clock"))
    try:
        write_new(path)
    except OSError:
        return time.time()
    try:
        return os.lstat(path).st_mtime
    finally:
        remove_quietly(path)


_offsets: Dict[str, Tuple[float, float]] = {}  # directory -> (file-system time - this node's, when measured)


def fs_clock(directory: str, refresh: float = 60.0) -> float:
    """:func:`fs_now` for a process that asks often: the offset between the file system's
    clock and this node's is measured at most every ``refresh`` seconds."""
    now = time.time()
    offset, measured = _offsets.get(directory, (0.0, None))
    if measured is None or not 0 <= now - measured < refresh:
        offset = fs_now(directory) - time.time()
        _offsets[directory] = (offset, now)
    return now + offset


def listdir(path: str) -> list:
    """Names in ``path`` (none if it does not exist)."""
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def remove_quietly(path: str) -> bool:
    """Unlink ``path``; return whether this call removed it."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def read_text_tail(path: str, limit: Optional[int] = None) -> str:
    try:
        fd = os.open(path, _READ_FLAGS)
    except (FileNotFoundError, OSError):
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        size = st.st_size
        if limit is not None and size > limit:
            os.lseek(fd, size - limit, os.SEEK_SET)
            size = limit
        return _read_rest(fd, size).decode("utf-8", errors="replace")
    finally:
        os.close(fd)
