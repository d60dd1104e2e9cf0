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
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

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


def member(uid: int, gid: int) -> bool:
    """Whether user ``uid`` is in group ``gid`` (as its primary group or a listed member)."""
    try:
        user = pwd.getpwuid(uid)
        return user.pw_gid == gid or user.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def _nobody() -> Set[int]:
    """The uid NFS shows the superuser's files as (root_squash), if there is one."""
    try:
        return {pwd.getpwnam("nobody").pw_uid}
    except KeyError:
        return set()


class Trust:
    """Checks paths against the users (``uids``) and the group (``gid``) who may write them.

    Members of ``gid`` count among the users too (a lab's directories may belong to any
    member). ``stops`` are trusted points where the walk up ends (the root).
    ``check_owners=False``: directories above the first one may belong to anyone (their
    modes still count).
    """

    def __init__(self, uids: Iterable[int], gid: Optional[int] = None, stops: Iterable[str] = (),
                 check_owners: bool = True):
        self.uids = set(uids) | {0} | _nobody()
        self.gid = gid
        self.stops = {os.path.realpath(s) for s in stops}
        self.check_owners = check_owners
        self.group_of = "root"  # whose group ``gid`` is, in messages
    def reason(self, path: str, imported_from: Optional[str] = None) -> Optional[str]:
        """Why ``path`` (or a directory above it) could be changed by someone else, or None.

        ``imported_from``: the directory code is imported from (on ``sys.path``): it and the
        directories between it and ``path`` may not be world-writable even if sticky. Both
        the path as written and the path its symbolic links lead to are walked.
        """
        literal = os.path.abspath(path)
        real = os.path.realpath(path)
        for walked in ([literal, real] if literal != real else [literal]):
            top = imported_from and (os.path.abspath(imported_from) if walked is literal
                                     else os.path.realpath(imported_from))
            why = self._walk(walked, top)
            if why:
                return why
        return None

    def _walk(self, current: str, strict_top: Optional[str]) -> Optional[str]:
        first, missing = True, False
        while True:
            try:
                st = os.stat(current)
            except FileNotFoundError:
                # not there (yet): whoever may create it decides what it will be, so the first
                # directory that exists is judged as if code were imported from it
                current, missing = os.path.dirname(current), True
                continue
            except OSError as exc:
                return "{} cannot be checked: {}".format(current, exc.strerror or exc)
            strict = missing or (strict_top is not None and _inside(strict_top, current))
            why = self._one(current, st, strict, first or self.check_owners)
            if why:
                return why
            if (current in self.stops or current == "/" or
                    (stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))):
                return None
            current, first, missing = os.path.dirname(current), False, False

    def _one(self, path: str, st: os.stat_result, strict: bool, owner: bool) -> Optional[str]:
        mode = stat.S_IMODE(st.st_mode)
        if owner and st.st_uid not in self.uids and not (self.gid is not None and member(st.st_uid, self.gid)):
            return ("{} belongs to user {}, who is neither the job's submitter nor this worker's user (its owner "
                    "could change it)".format(path, _user(st.st_uid)))
        if mode & stat.S_IWOTH and (strict or not (stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX)):
            return "{} is writable by every user (mode {:o})".format(path, mode)
        if mode & stat.S_IWGRP and st.st_gid != self.gid and not private_group(st.st_gid, st.st_uid):
            return "{} is writable by group {} (mode {:o}), which is not the {}'s group".format(
                path, _group(st.st_gid), mode, self.group_of)
        return None


def _inside(top: str, path: str) -> bool:
    """Whether ``path`` is ``top`` or below it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def _owners_of(paths: Iterable[str]) -> Set[int]:
    out = set()
    for p in paths:
        try:
            out.add(os.stat(p).st_uid)
        except OSError:
            pass
    return out


class CodeTrust:
    """A worker's checks of the code of the jobs it is about to run (remembered a while).

    Besides the submitter and the worker's user, whoever owns the Python the worker runs
    (its ``sys.prefix``, base prefix and executable: a site's software tree, a lab's conda)
    is trusted: the worker runs their code already.
    """

    def __init__(self, root: Any, sys_path: List[str]):
        self.root = root
        self.gid = os.stat(root.path).st_gid if root.group_shared else None
        self.python_owners = _owners_of({sys.prefix, sys.base_prefix, os.path.realpath(sys.executable)})
        self._seen: Dict[Tuple, Tuple[Optional[str], float]] = {}
        self._sys_path = [p or os.getcwd() for p in sys_path]  # '' is the current directory

    def uids(self, spec: Dict[str, Any]) -> frozenset:
        who = spec.get("submitted_by") or {}
        return frozenset({os.getuid()} | self.python_owners |
                         ({who["uid"]} if isinstance(who.get("uid"), int) else set()))

    def job_reason(self, spec: Dict[str, Any]) -> Optional[str]:
        """Why running this job's code would let someone other than its submitter, this
        worker's user or the root's group decide what runs; None if nobody could."""
        uids = self.uids(spec)
        image = spec.get("container")
        if image:  # its code environment lives in the root; a local image is used where it lies
            if isinstance(image, str) and image.startswith("/"):
                return self.path_reason(uids, image, image if os.path.isdir(image) else None)
            return None
        fspec = spec.get("function") or {}
        file = fspec.get("file")
        checks: List[Tuple[str, Optional[str]]] = [(p, p) for p in self._sys_path if p]
        if isinstance(file, str) and file:
            top = fspec.get("import_root") if fspec.get("module") != "__main__" else None
            top = top or os.path.dirname(file)
            checks.append((file, top))
            # a package's __init__ files run before the module; a __pycache__ could hold planted bytecode
            directory = os.path.dirname(file)
            while _inside(top, directory):
                checks += [(os.path.join(directory, "__init__.py"), top), (os.path.join(directory, "__pycache__"), top)]
                if directory == top:
                    break
                directory = os.path.dirname(directory)
        for path, imported_from in checks:
            why = self.path_reason(uids, path, imported_from)
            if why:
                return why
        return None

    def path_reason(self, uids: frozenset, path: str, imported_from: Optional[str]) -> Optional[str]:
        """:meth:`Trust.reason` for these users, remembered for ``REMEMBER_SECONDS``."""
        if imported_from is not None and os.path.basename(path) in ("__init__.py", "__pycache__") \
                and not os.path.lexists(path):
            return None  # no package file, no bytecode directory: nothing to plant in there (its directory is checked)
        key = (uids, path, imported_from)
        now = time.monotonic()
        hit = self._seen.get(key)
        if hit is None or now - hit[1] > REMEMBER_SECONDS:
            why = Trust(uids, self.gid, [self.root.path]).reason(path, imported_from)
            if why and path == imported_from:
                why = "{} (on sys.path)".format(why)
            if len(self._seen) > 10000:
                self._seen.clear()
            hit = self._seen[key] = (why, now)
        return hit[0]

    def guard_imports(self, spec: Dict[str, Any]) -> None:
        """In a job's process: check every directory that gets on ``sys.path`` from now on
        (a ``sys.path.insert`` in the job's own code, the job's working directory for ``''``)
        before anything is imported from it. A directory that fails raises
        :class:`UntrustedCodeError` from the import."""
        uids = self.uids(spec)

        def hook(entry: str):
            directory = entry or os.getcwd()
            why = self.path_reason(uids, directory, directory) if os.path.isdir(directory) else None
            if why:
                raise UntrustedCodeError("refusing to import from {}: {}".format(directory, why))
            raise ImportError  # trusted: the next hook (the usual file finder) takes it
        sys.path_hooks.insert(0, hook)
        for entry in list(sys.path_importer_cache):  # relative entries ('' above all) follow the job's chdir
            if not os.path.isabs(entry):
                del sys.path_importer_cache[entry]


class UntrustedCodeError(PermissionError):
    """A job tried to import code from a place someone else could change."""


def cache_reason(path: str) -> Optional[str]:
    """Why a job cache's directory at ``path`` (or, before it exists, the directory it will be
    made in) could hold results written by someone other than this user or its group, or None:
    the rules for code, except that the directories above may belong to anyone."""
    existing = path
    while not os.path.exists(existing) and existing != os.path.dirname(existing):
        existing = os.path.dirname(existing)
    st = os.stat(existing)
    if existing == path:
        why = cache_entry_reason(path, st, st.st_gid)
        if why:
            return why
    trust = Trust({os.getuid()}, _my_group(st.st_gid), check_owners=False)
    trust.group_of = "cache"
    return trust.reason(existing, existing)


def _my_group(gid: int) -> Optional[int]:
    return gid if gid in os.getgroups() or gid == os.getgid() else None


def cache_entry_reason(path: str, st: os.stat_result, gid: int) -> Optional[str]:
    """Why a cache's directory, shard or entry (``st``) could have been written by someone
    other than this user or a member of the cache directory's group ``gid`` (when this user
    is in it): checked at every read, its owner and mode only, no walk."""
    trust = Trust({os.getuid()}, _my_group(gid))
    trust.group_of = "cache"
    return trust._one(path, st, True, True)
