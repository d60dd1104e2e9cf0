"""The root: the shared directory that is both the job bus and the store.

:class:`Root` opens (or creates) a root, checks its format version and who
may write it. How jobs move through it is :mod:`hither_fs.protocol`'s
business; where things are is :class:`~hither_fs.runtime.layout.Layout`'s.
"""

import datetime
import errno
import grp
import os
import stat
import time
import uuid
import warnings
from typing import Any, Dict, List, Optional

from .runtime.files import guard_tree, makedirs, read_json, register_tree, write_json
from .runtime.layout import Layout
from .runtime.store import Store
from .trust import private_group

#: Version of the root's layout and protocol. Format 1 (hither_fs 0.1) kept per-job
#: lock files and several records per job; format 2 claims jobs by renaming tokens.
FORMAT = 2
ENV_ROOT = "HITHER_FS_ROOT"
DEFAULT_ROOT = os.path.join("~", ".hither_fs")


class RootError(Exception):
    """The root directory cannot be used (wrong type, permissions, ownership, format)."""


def iso_at(t: float) -> str:
    """The time ``t`` (seconds since the epoch) as the root's records write times:
    UTC to the microsecond, ``2026-01-31T12:00:00.000000Z``."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


def now_iso() -> str:
    return iso_at(time.time())


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def default_root_path() -> str:
    env = os.environ.get(ENV_ROOT)
    if env is not None:
        if not env.strip() or "\x00" in env or "\n" in env:
            raise RootError("{} is set but malformed ({!r}); set it to a directory path or unset it"
                            .format(ENV_ROOT, env))
        return os.path.abspath(os.path.expanduser(env))
    return os.path.abspath(os.path.expanduser(DEFAULT_ROOT))


def _cannot_create(path: str, exc: OSError) -> str:
    """Why no root can be made at ``path``, told by the nearest part of it that exists."""
    base = path
    while not os.path.exists(base) and os.path.dirname(base) != base:
        base = os.path.dirname(base)
    try:
        read_only = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if not os.path.isdir(base):
        why = "{} is a file, not a directory".format(base)
    elif exc.errno == errno.EROFS or read_only:
        why = "{} is on a read-only file system".format(base)
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = "this user may not create files or directories in {}".format(base)
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk (or quota) holding {} is full".format(base)
    else:
        why = "the file system holding {} refused to create it".format(base)
    return ("cannot create hither_fs root at {}: {} ({}); choose another directory (hi.Root(path), "
            "hi.Config(root=...) or ${})".format(path, why, exc.strerror or exc, ENV_ROOT))


def _wrong_format(marker: str, found: Any) -> str:
    if found == 1:
        return ("{} is a root of format 1 (hither_fs 0.1), whose jobs this hither_fs (format {}) cannot "
                "read without misreading them. Finish or cancel its jobs and collect its results with "
                "hither_fs 0.1, then move it aside and start a new root here (or point HITHER_FS_ROOT "
                "elsewhere); its store/ and cache/ directories can be kept in a new root's place, "
                "they are unchanged.".format(os.path.dirname(marker), FORMAT))
    return ("{} says root format {!r}; this hither_fs reads format {}. Use the hither_fs version that "
            "made it, or another root.".format(marker, found, FORMAT))


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _group_to_share_with(shared: Optional[str]) -> Optional[int]:
    """The gid ``shared`` names (None for 'private', 'group' and no sharing); checked at once."""
    if shared in (None, "private", "group"):
        return None
    if not isinstance(shared, str) or not shared.strip():
        raise ValueError("shared must be 'private', 'group' or the name of a group, not {!r}".format(shared))
    try:
        gid = grp.getgrnam(shared).gr_gid
    except KeyError:
        raise ValueError("shared={!r}: there is no group of that name (`getent group` lists them)".format(
            shared)) from None
    if gid not in os.getgroups() and gid != os.getgid() and os.getuid() != 0:
        raise ValueError("shared={!r}: you are not in group {!r}, so you cannot share a root with it "
                         "(`id` lists your groups; a new membership counts after logging in again)".format(
                             shared, shared))
    return gid


def _check_sharing(path: str, info: Dict[str, Any], shared: Optional[str], gid: Optional[int]) -> None:
    """An existing root opened with ``shared=...``: it must be shared as asked (sharing is
    chosen when a root is made)."""
    if shared is None:
        return
    mode = info.get("mode")
    if (shared == "private") != (mode == "private") or (gid is not None and os.stat(path).st_gid != gid):
        raise RootError("hither_fs root {} exists already, {}; it cannot be opened with shared={!r}. A root's "
                        "sharing is chosen when it is made: make a new one, or open this one without shared=".format(
                            path, "private" if mode == "private" else "shared with group {}".format(
                                _group_name(os.stat(path).st_gid)), shared))


def _not_readable(path: str) -> str:
    """Why this user cannot open a root, said as helpfully as a stat allows."""
    why = "hither_fs root {} is not readable by this user".format(path)
    try:
        st = os.stat(path)
    except OSError:
        return why
    if st.st_mode & stat.S_ISGID and st.st_gid not in os.getgroups() and st.st_gid != os.getgid():
        return "{}: it is shared with group {}, which this user is not in{}".format(
            why, _group_name(st.st_gid), " (that group is one user's own: ask its owner to make the root with "
            "hi.Root(path, shared='<your lab group>'))" if private_group(st.st_gid) else "")
    return why


class Root:
    """An opened root directory.

    ``Root(path)`` creates the root if it does not exist (``create=False``:
    raise ``RootError`` instead). The default is private to the user (0700
    directories, 0600 files). ``shared="lab"`` (the name of a group you are in)
    creates it for that group: its directories belong to the group, setgid
    (so everything made in them does too), and group-writable, so every
    member's workers can run every member's jobs. ``shared="group"`` does the
    same with the group the directory gets anyway (that of a setgid parent
    directory, else your primary group); with user-private groups, the default
    on Debian, Ubuntu and RHEL, that group holds only you, and a warning says
    so.
    """

    _opened: Dict[str, "Root"] = {}

    def __init__(self, path: Optional[str] = None, *, shared: Optional[str] = None, create: bool = True):
        path = default_root_path() if path is None else os.path.abspath(os.path.expanduser(str(path)))
        self.path = path
        self.layout = Layout(path)
        self.store = Store(self.layout.store)
        if not create and not os.path.exists(self.layout.marker):
            raise RootError("{} is not a hither_fs root (no root.json there)".format(path))
        self.info = self._open_or_create(shared)
        self.group_shared = self.info.get("mode") == "group"
        register_tree(path, self.group_shared)
        guard_tree(self.layout.jobs)  # a job's files are never read through a symbolic link
        #: mode of new files, which other group members must open in a shared root
        self.file_mode = 0o660 if self.group_shared else 0o600

    @classmethod
    def get(cls, path: Optional[str] = None, create: bool = True) -> "Root":
        """The process-wide ``Root`` object for a path (opened once)."""
        resolved = default_root_path() if path is None else os.path.abspath(os.path.expanduser(str(path)))
        root = cls._opened.get(resolved)
        if root is None:
            root = cls._opened[resolved] = cls(resolved, create=create)
        return root

    def __repr__(self):
        return "Root({!r})".format(self.path)

    # -- opening -----------------------------------------------------------

    def _open_or_create(self, shared: Optional[str]) -> Dict[str, Any]:
        path, marker = self.path, self.layout.marker
        gid = _group_to_share_with(shared)
        if os.path.exists(path) and not os.path.isdir(path):
            raise RootError("hither_fs root {} is a file, not a directory".format(path))
        if os.path.isdir(path):
            if not os.access(path, os.R_OK | os.X_OK):
                raise RootError(_not_readable(path))
            if os.path.exists(marker):
                info = read_json(marker)
                if not isinstance(info, dict) or info.get("format") != FORMAT:
                    raise RootError(_wrong_format(marker, info.get("format") if isinstance(info, dict) else info))
                _check_sharing(path, info, shared, gid)
                return info
            if [n for n in os.listdir(path) if not n.startswith(".")]:
                raise RootError("{} exists, is not empty and is not a hither_fs root (no root.json); "
                                "choose an empty or new directory".format(path))
        mode = "private" if shared in (None, "private") else "group"
        dir_mode = 0o2770 if mode == "group" else 0o700
        try:
            os.makedirs(path, mode=dir_mode, exist_ok=True)
            st = os.stat(path)
            if gid is not None and st.st_gid != gid:
                os.chown(path, -1, gid)  # before the chmod: a chown may clear the setgid bit
            if stat.S_IMODE(os.stat(path).st_mode) != dir_mode:  # an admin's empty directory may be right already
                os.chmod(path, dir_mode)
            register_tree(path, mode == "group")
            # the marker first: a concurrent opener then sees a root, not a stranger's directory
            if not os.path.exists(marker):
                info = {"format": FORMAT, "mode": mode, "created": now_iso()}
                if mode == "group":
                    info["group"] = _group_name(os.stat(path).st_gid)
                write_json(marker, info)
            for d in self.layout.top_dirs():
                makedirs(d)
        except OSError as exc:
            raise RootError(_cannot_create(path, exc)) from None
        info = read_json(marker)
        if info.get("format") != FORMAT:
            raise RootError(_wrong_format(marker, info.get("format")))
        st = os.stat(path)
        if mode == "group" and private_group(st.st_gid):
            warnings.warn("hither_fs root {} is shared with group {}, which holds only its owner: nobody else can "
                          "use it. Share it with your lab's group: hi.Root(path, shared='<group>') (see "
                          "`getent group`), or make it inside a setgid directory of that group".format(
                              path, _group_name(st.st_gid)), stacklevel=3)
        return info

    def unsafe_reason(self, paths: Optional[List[str]] = None, *,
                      allow_group_write: bool = False) -> Optional[str]:
        """Why running jobs from this root would let someone else run code, or None.

        Anyone who can write the root (or a job's directory or spec) can make
        its workers run code, so a worker refuses what others can write.
        ``paths`` defaults to the root and its top directories.
        ``allow_group_write``: group write access is not a reason (a job's
        files inside a private root: a umask of 002 makes them group-writable,
        and nobody but the user can reach them anyway).
        """
        for path in paths if paths is not None else [self.path] + self.layout.top_dirs():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            reason = self.unsafe_stat_reason(path, st, allow_group_write=allow_group_write)
            if reason:
                return reason
        return None

    def unsafe_stat_reason(self, path: str, st: os.stat_result, *, allow_group_write: bool = False) -> Optional[str]:
        """:meth:`unsafe_reason` for one file whose ``stat`` the caller already has."""
        if st.st_mode & stat.S_IWOTH:
            return "{} is writable by every user (mode {:o})".format(path, stat.S_IMODE(st.st_mode))
        if st.st_uid != os.getuid() and not self.group_shared:
            return "{} belongs to uid {}, not to this user (uid {})".format(path, st.st_uid, os.getuid())
        if st.st_mode & stat.S_IWGRP and not (self.group_shared or allow_group_write):
            return ("{} is group-writable but the root is not in group-shared mode "
                    "(root.json mode {!r})".format(path, self.info.get("mode")))
        return None
