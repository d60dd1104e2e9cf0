"""Being woken the moment a file is renamed into a directory on this machine (Linux inotify).

A waiter for a job looks at the job's ``state.json`` again and again; the
sooner it looks after the job ends, the more looks a long wait costs. On a
filesystem of this machine inotify ends that trade-off: the kernel wakes the
waiter when a file is renamed into the job's directory (as every new
``state.json`` is), so it notices at once and needs only a few looks a second
meanwhile.

It only ever *shortens* a wait. The waiter still reads ``state.json`` to learn
the status, and still looks now and then without an event: on NFS, Lustre,
GPFS or BeeGFS a file written by another node raises no event here, so those
roots are not watched at all (see :func:`is_local`) and are polled as before;
and should an event be lost (a full event queue, a filesystem we misjudged),
the next look finds what it missed.
"""

import ctypes
import logging
import os
import select
import struct
import sys
import threading
from typing import Callable, Dict, List, Optional, Set

IN_MOVED_TO = 0x00000080
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
#: A file renamed into the directory, or the directory itself gone.
EVENTS = IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

#: Filesystems where every change made on this machine raises an event on this machine,
#: and no other machine writes. Anything else (nfs, lustre, gpfs, beegfs, cifs, fuse.*) is polled.
LOCAL_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "f2fs", "zfs", "jfs",
                         "reiserfs", "bcachefs", "nilfs2", "overlay"})

log = logging.getLogger("hither_fs.dirwatch")

#: The most directories this process watches at once (the user's limit is shared with
#: every other program: editors watch files too). More jobs waited for at once are polled.
MAX_WATCHES = 1024

_libc: Optional[ctypes.CDLL] = None
_local: Dict[str, bool] = {}


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline, backslash as octal)."""
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def fs_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """The type of the filesystem ``path`` lies on (``ext4``, ``nfs4``, ...), from the mount
    table; None if that cannot be told."""
    real = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(" ")
        try:
            point = _unescape(fields[4])
            fstype = fields[fields.index("-", 6) + 1]
        except (IndexError, ValueError):
            continue
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the last of equal mount points is the one on top
            best, best_type = point, fstype
    return best_type


def is_local(path: str) -> bool:
    """Whether ``path`` lies on a filesystem of this machine that raises inotify events for
    every change (see :data:`LOCAL_TYPES`); asked once per path."""
    known = _local.get(path)
    if known is None:
        known = _local[path] = sys.platform.startswith("linux") and fs_type(path) in LOCAL_TYPES
    return known


def _inotify() -> Optional[ctypes.CDLL]:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            for name in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
                getattr(libc, name)
        except (OSError, AttributeError):  # not Linux, or a libc without inotify
            return None
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc = libc
    return _libc


class Subscription:
    """A wish to be told when a file is renamed into one directory: ``wake()`` is called then
    (by the reading thread: it must be quick, e.g. set an ``Event``)."""

    __slots__ = ("path", "wake", "wd")

    def __init__(self, path: str, wake: Callable[[], None], wd: int) -> None:
        self.path, self.wake, self.wd = path, wake, wd


class Watches:
    """This process's one inotify instance, and the daemon thread that reads its events and
    calls the subscribers' ``wake``. (One instance for all: closing an inotify instance
    waits for the kernel's grace period, milliseconds, so none is closed per wait.)"""

    def __init__(self, fd: int, libc: ctypes.CDLL) -> None:
        self.fd, self._libc = fd, libc
        self._lock = threading.Lock()
        self._subs: Dict[int, List[Subscription]] = {}  # by watch descriptor
        self._thread = threading.Thread(target=self._read, name="hither_fs-dirwatch", daemon=True)
        self._thread.start()

    def subscribe(self, path: str, wake: Callable[[], None]) -> Optional[Subscription]:
        with self._lock:
            if len(self._subs) >= MAX_WATCHES:
                return None
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), EVENTS)
            if wd < 0:
                return None  # gone, or this user's limit of watches reached: the caller polls
            sub = Subscription(path, wake, wd)
            self._subs.setdefault(wd, []).append(sub)
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.wd, [])
            if sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._subs[sub.wd]
                    self._libc.inotify_rm_watch(self.fd, sub.wd)  # EINVAL if the kernel dropped it: fine

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while True:
            try:
                poller.poll()
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:  # never expected; the subscribers poll on
                log.debug("inotify: %s", exc)
                return
            fired: Set[int] = set()
            gone: List[Subscription] = []
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, pos)
                pos += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    with self._lock:
                        fired.update(self._subs)  # events were lost: everyone looks
                elif mask & IN_IGNORED:  # the directory is gone, and its watch with it
                    with self._lock:
                        gone.extend(self._subs.pop(wd, []))
                    for sub in gone:
                        sub.wd = -1
                else:
                    fired.add(wd)
            with self._lock:
                subs = gone + [sub for wd in fired for sub in self._subs.get(wd, ())]
            for sub in subs:
                try:
                    sub.wake()
                except Exception as exc:
                    log.debug("inotify subscriber of %s: %s", sub.path, exc)


_watches: Optional[Watches] = None
_watches_lock = threading.Lock()


def _reset_after_fork() -> None:
    """In a forked child: the reading thread stayed in the parent, so the child makes its
    own instance if it waits (the parent's, shared, is only let go of here)."""
    global _watches, _watches_lock
    if _watches is not None:
        try:
            os.close(_watches.fd)
        except OSError:
            pass
    _watches, _watches_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def subscribe(path: str, wake: Callable[[], None]) -> Optional[Subscription]:
    """Have ``wake()`` called whenever a file is renamed into directory ``path`` (or ``path``
    goes), which the caller has found :func:`is_local`. None where inotify cannot serve
    (not Linux, the limits of instances or watches reached, ``path`` gone): poll then."""
    global _watches
    if _watches is None:
        with _watches_lock:
            libc = _inotify()
            if _watches is None and libc is not None:
                fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
                if fd < 0:
                    return None
                _watches = Watches(fd, libc)
    return _watches.subscribe(path, wake) if _watches is not None else None


def unsubscribe(sub: Optional[Subscription]) -> None:
    if sub is not None and _watches is not None:
        _watches.unsubscribe(sub)
