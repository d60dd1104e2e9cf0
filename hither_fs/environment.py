"""The Python environment a job was submitted from, and how a worker takes it on.

A job must run as it would have run in the submitting script: the same
interpreter, virtualenv or conda prefix, ``sys.path`` and environment
variables (``PYTHONPATH``, ``OMP_NUM_THREADS``, ``CUDA_VISIBLE_DEVICES``, a
``MYVAR`` of the user's own...). A *fingerprint* - the sha1 of all of those -
names the environment. Handlers put it in the name of the queue their jobs go
to, and start their workers in exactly that environment, so workers left over
from a script run in another environment never see the jobs.

Values are never written to the root (they may hold secrets): a worker gets
them the way any child process does, from the process that starts it. The
only extra it receives is the submitter's ``sys.path`` (``HITHER_FS_SYS_PATH``)
and ``PYTHONPATH`` (``HITHER_FS_PYTHONPATH``, since starting the worker adds
the package's own directory to it); :func:`adopt` puts both back in the worker
before it runs any job.

Standard library only.
"""

import hashlib
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

#: Variables a shell changes between two runs of the same script in the same
#: session, or that hither_fs sets itself inside a job: left out of the fingerprint.
VOLATILE = frozenset({"_", "OLDPWD", "PWD", "SHLVL", "HITHER_FS_JOB_ID"})

#: Hex digits of the fingerprint in a queue name.
FINGERPRINT_CHARS = 12
#: The directory holding the ``hither_fs`` package, put on a worker's ``PYTHONPATH``.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SYS_PATH = "HITHER_FS_SYS_PATH"
_PYTHONPATH = "HITHER_FS_PYTHONPATH"


def sys_path() -> List[str]:
    """This process's ``sys.path`` with ``''`` (the current directory) made absolute."""
    cwd = os.getcwd()
    return [p if p else cwd for p in sys.path]


def fingerprint(environ: Optional[Dict[str, str]] = None, path: Optional[List[str]] = None) -> str:
    """sha1 of the interpreter, its prefix, ``sys.path`` and the environment variables."""
    environ = os.environ if environ is None else environ
    text = json.dumps([sys.executable, sys.prefix, sys_path() if path is None else path,
                       sorted((k, v) for k, v in environ.items() if k not in VOLATILE)],
                      separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()


class Snapshot:
    """The environment of this process at one moment: what its workers are started with."""

    def __init__(self, environ: Dict[str, str], path: List[str]):
        self.environ = environ
        self.path = path
        self.fingerprint = fingerprint(environ, path)

    def queue(self, base: str, shape: Optional[Dict] = None) -> str:
        """The name of the queue of ``base`` (``local``, ``slurm``...) for this environment
        (and, for Slurm, the allocation ``shape``)."""
        digest = self.fingerprint
        if shape is not None:
            digest = hashlib.sha1(json.dumps([digest, shape], sort_keys=True).encode("utf-8")).hexdigest()
        return "{}-{}".format(base, digest[:FINGERPRINT_CHARS])

    def describe(self) -> Dict[str, str]:
        """What a job's spec records of its environment (no variable values)."""
        return {"python": sys.executable, "prefix": sys.prefix, "fingerprint": self.fingerprint}

    def for_worker(self, package_parent: str) -> Dict[str, str]:
        """The variables of a worker process started for this environment."""
        env = dict(self.environ)
        env[_SYS_PATH] = json.dumps(self.path)
        env[_PYTHONPATH] = json.dumps(env.get("PYTHONPATH"))  # "null": it had none
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        return env


_last: Optional[Snapshot] = None
#: What ``_last`` was made from, as cheap to compare as can be: the raw bytes of the
#: environment (CPython's ``os.environ._data``), ``sys.path`` and the working directory.
_seen: Optional[Tuple[Any, List[str], str]] = None


def current() -> Snapshot:
    """This process's environment now (the fingerprint is computed again only after a change;
    a submission calls this once per job, so the check for a change is a few dict compares)."""
    global _last, _seen
    raw = getattr(os.environ, "_data", None)
    seen = (raw, sys.path, os.getcwd())
    if _last is not None and _seen is not None and raw is not None and _seen == seen:
        return _last
    environ, path = dict(os.environ), sys_path()
    if _last is None or _last.environ != environ or _last.path != path:
        _last = Snapshot(environ, path)
    _seen = (dict(raw) if raw is not None else None, list(sys.path), seen[2])
    return _last


def adopt() -> None:
    """In a worker: take on the submitter's ``sys.path`` and ``PYTHONPATH`` (see the module doc)."""
    recorded = os.environ.pop(_SYS_PATH, None)
    if recorded is not None:
        try:
            path = json.loads(recorded)
        except ValueError:
            path = None
        if isinstance(path, list) and all(isinstance(p, str) for p in path):
            sys.path[:] = path
    recorded = os.environ.pop(_PYTHONPATH, None)
    if recorded is not None:
        try:
            original = json.loads(recorded)
        except ValueError:
            return
        if original is None:
            os.environ.pop("PYTHONPATH", None)
        elif isinstance(original, str):
            os.environ["PYTHONPATH"] = original
