"""Make this process die, or a write fail for want of disk space, at its n-th metadata
operation inside a directory - for crash-consistency tests.

Armed in a child process before it does its work::

    python -c "import crashpoint; crashpoint.arm('/root', 7, 'kill'); ..."

Every ``os`` call that creates, renames or removes something under the
directory (``open`` for writing, ``mkdir``, ``rename``/``replace``, ``link``,
``unlink``, ``rmdir``) is counted; at the n-th one the process SIGKILLs itself
*before* the call (``kill``: a crash between the (n-1)-th and the n-th step),
or the call raises ``OSError(ENOSPC)`` once (``enospc``: a full disk at that
write; removals are not counted then). ``fired()`` says whether it happened. Only the armed process counts: a forked job process does not. The
process really dies or really sees the error; nothing else is simulated.
"""

import errno
import os
import signal

_state = {"n": 0, "at": None, "mode": None, "under": None, "pid": None, "fired": False}


def _hits(*paths) -> bool:
    under = _state["under"]
    return any(isinstance(p, str) and (p == under or p.startswith(under + os.sep)) for p in paths)


def _wrap(name, write_only=False):
    real = getattr(os, name)

    def wrapper(*args, **kwargs):
        paths = [a for a in args if isinstance(a, str)]
        if name == "open" and not (args[1] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
            paths = []  # a read: not a step that changes anything
        if name in ("unlink", "rmdir") and _state["mode"] == "enospc":
            paths = []  # removing never needs space
        if os.getpid() == _state["pid"] and not _state["fired"] and _hits(*paths):
            _state["n"] += 1
            if _state["n"] == _state["at"]:
                _state["fired"] = True
                if _state["mode"] == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), paths[0])
        return real(*args, **kwargs)
    setattr(os, name, wrapper)


def arm(under: str, at: int, mode: str) -> None:
    _state.update(under=os.path.abspath(under), at=at, mode=mode, pid=os.getpid(), n=0, fired=False)
    for name in ("open", "mkdir", "rename", "replace", "link", "unlink", "rmdir"):
        _wrap(name)


def fired() -> bool:
    return _state["fired"]
