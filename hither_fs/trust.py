"""Who may write what a worker runs, or what a job cache answers with.

A worker runs code as its own user: whoever can change that code (or plant a
module where it is imported from) can act as that user. So, as OpenSSH's
``StrictModes`` does for keys, a worker checks before it runs a job that the
function's file, every directory above it, every directory the job puts on
``sys.path`` and every directory on the worker's own ``sys.path`` can be
written only by the job's submitter, the worker's user, the superuser or (in
a group-shared root) the root's group. The walk up stops at a trusted point:
the root, ``/``, or a directory the superuser owns that nobody else can
write. A directory above the code may be world-writable if it is sticky
(``/tmp``: nobody can replace another's entry there); a directory the code is
imported from may not (anybody could add a module to it).

:class:`Trust` also checks a ``JobCache(path)``'s directory: a result
planted there would be believed.
"""

import grp
import os
import pwd
import stat
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

#: Seconds a worker reuses what it found about a path (each look is a few stats).
REMEMBER_SECONDS = 30.0


def _user(uid: int) -> str:
    try:
        return "{} ({})".format(uid, pwd.getpwuid(uid).pw_name)
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return "{} ({})".format(gid, grp.getgrgid(gid).gr_name)
    except KeyError:
        return str(gid)


def private_group(gid: int, uid: Optional[int] = None) -> bool:
    """Whether ``gid`` is one user's own group - a user-private group, the default on Debian,
    Ubuntu and RHEL: named as its user, that user's primary group, with no other members
    (``uid``: that user). Looked up by name, never by listing every user (which a directory
    service may not allow)."""
    try:
        group = grp.getgrgid(gid)
        user = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(group.gr_name)
    except KeyError:
        return False
    return not group.gr_mem and user.pw_gid == gid and user.pw_name == group.gr_name


class Trust:
    """Checks paths against the users (``uids``) and the group (``gid``) who may write them.

    ``stops`` are trusted points where the walk up ends (the root).
    ``check_owners=False``: directories above the first one may belong to anyone (their
    modes still count).
    """

    def __init__(self, uids: Iterable[int], gid: Optional[int] = None, stops: Iterable[str] = (),
                 check_owners: bool = True):
        self.uids = set(uids) | {0}
        self.gid = gid
        self.stops = {os.path.realpath(s) for s in stops}
        self.check_owners = check_owners

    def reason(self, path: str, imported_from: Optional[str] = None) -> Optional[str]:
        """Why ``path`` (or a directory above it) could be changed by someone else, or None.

        ``imported_from``: the directory code is imported from (on ``sys.path``): it and the
        directories between it and ``path`` may not be world-writable even if sticky.
        """
        current = os.path.realpath(path)
        strict_top = os.path.realpath(imported_from) if imported_from else None
        first = True
        while True:
            try:
                st = os.stat(current)
            except FileNotFoundError:  # gone (the job runs its submitted source): its directory still counts
                current = os.path.dirname(current)
                continue
            except OSError as exc:
                return "{} cannot be checked: {}".format(current, exc.strerror or exc)
            strict = strict_top is not None and _inside(strict_top, current)
            why = self._one(current, st, strict, first or self.check_owners)
            if why:
                return why
            if (current in self.stops or current == "/" or
                    (stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))):
                return None
            current, first = os.path.dirname(current), False

    def _one(self, path: str, st: os.stat_result, strict: bool, owner: bool) -> Optional[str]:
        mode = stat.S_IMODE(st.st_mode)
        if owner and st.st_uid not in self.uids:
            return ("{} belongs to user {}, who is neither the job's submitter nor this worker's user (its owner "
                    "could change it)".format(path, _user(st.st_uid)))
        if mode & stat.S_IWOTH and (strict or not (stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX)):
            return "{} is writable by every user (mode {:o})".format(path, mode)
        if mode & stat.S_IWGRP and st.st_gid != self.gid and not private_group(st.st_gid, st.st_uid):
            return "{} is writable by group {} (mode {:o}), which is not the root's group".format(
                path, _group(st.st_gid), mode)
        return None


def _inside(top: str, path: str) -> bool:
    """Whether ``path`` is ``top`` or below it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


class CodeTrust:
    """A worker's checks of the code of the jobs it is about to run (remembered a while)."""

    def __init__(self, root: Any, sys_path: List[str]):
        self.root = root
        self.gid = os.stat(root.path).st_gid if root.group_shared else None
        self._seen: Dict[Tuple, Tuple[Optional[str], float]] = {}
        self._sys_path = [p or os.getcwd() for p in sys_path]  # '' is the current directory

    def job_reason(self, spec: Dict[str, Any]) -> Optional[str]:
        """Why running this job's code would let someone other than its submitter, this
        worker's user or the root's group decide what runs; None if nobody could."""
        if spec.get("container"):
            return None  # its code environment lives in the root
        who = spec.get("submitted_by") or {}
        uids = {os.getuid()} | ({who["uid"]} if isinstance(who.get("uid"), int) else set())
        fspec = spec.get("function") or {}
        file = fspec.get("file")
        checks: List[Tuple[str, Optional[str]]] = [(p, p) for p in self._sys_path if p]
        if isinstance(file, str) and file:
            top = fspec.get("import_root") if fspec.get("module") != "__main__" else None
            checks.append((file, top or os.path.dirname(file)))
        for path, imported_from in checks:
            why = self._remembered(frozenset(uids), path, imported_from)
            if why:
                return why
        return None

    def _remembered(self, uids: frozenset, path: str, imported_from: Optional[str]) -> Optional[str]:
        key = (uids, path, imported_from)
        now = time.monotonic()
        hit = self._seen.get(key)
        if hit is None or now - hit[1] > REMEMBER_SECONDS:
            why = Trust(uids, self.gid, [self.root.path]).reason(path, imported_from)
            if why and path == imported_from:
                why = "{} (on sys.path)".format(why)
            hit = self._seen[key] = (why, now)
        return hit[0]


def cache_reason(path: str) -> Optional[str]:
    """Why a job cache's directory at ``path`` (or, before it exists, the directory it will be
    made in) could hold results written by someone other than its owner or its group, or None:
    the rules for code, except that the directories above may belong to anyone."""
    existing = path
    while not os.path.exists(existing) and existing != os.path.dirname(existing):
        existing = os.path.dirname(existing)
    st = os.stat(existing)
    why = Trust({os.getuid(), st.st_uid}, st.st_gid, check_owners=False).reason(
        existing, existing if existing == path else None)
    return why and why.replace("which is not the root's group", "which is not the cache's group")


def entry_reason(path: str, st: os.stat_result, gid: int) -> Optional[str]:
    """:func:`cache_reason` for one shard or entry of a cache whose directory has group ``gid``
    (checked at every read: its mode only, no walk)."""
    return Trust({st.st_uid}, gid)._one(path, st, True, False)
