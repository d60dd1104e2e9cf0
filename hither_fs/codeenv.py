"""A function's code environment: the code a container job takes with it.

A container image holds Python and libraries, not the user's own code, so
when a containerized job is submitted its code is captured as the hither
docs describe:

* every ``.py`` file under the directory of the file that defines the
  function, at any depth, except that directory's own ``__init__.py`` (it
  often imports the rest of a big host package; an empty one stands in);
* every file there whose *name* matches one of the function's
  ``additional_files`` patterns (``fnmatch``, e.g. ``'*.config'``);
* every ``.py`` file of each of its ``local_modules``: directories or ``.py``
  files anywhere on the host (relative paths count from the function's
  directory), importable in the container under their own name.

Hidden files and directories, ``__pycache__`` and virtualenvs are skipped,
and so are symlinked directories. The files go into the root's sha1 store
(a file is stored once however many environments hold it) and are listed in
a *manifest*, itself a store blob, whose sha1 names the environment: the
same code is stored once. The job spec's ``code`` entry names the manifest
and where the function sits inside the environment.

Where a container job runs, :func:`materialize` unpacks the manifest once
per root into ``code/envs/ab/<sha1>/`` (temp directory, then one atomic
rename), which the runner binds read-only into the container and puts on
its ``PYTHONPATH``. :func:`materialize_runtime` does the same for the
stand-in ``hither_fs`` package (:mod:`hither_fs.runtime.standin`) that the
code imports there.
"""

import fnmatch
import json
import linecache
import os
import shutil
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from .runtime.files import copy_new, makedirs, rename_dir_unless_there, temp_name
from .runtime.store import Store, sha1_of_file
from .shipping import needs_shipping, shipped_source

FORMAT = 1
#: Where a notebook's shipped source sits in its code environment.
SHIPPED_FILE = "shipped_from_notebook.py"
#: Refuse to capture more than this: a function file sitting in a huge
#: directory (a home directory, a data tree) is almost surely a mistake.
MAX_FILES = 5000
MAX_BYTES = 100 * 1024 * 1024


class CodeEnvError(ValueError):
    """The function's code environment cannot be captured or unpacked safely."""


def check_patterns(patterns: List[str], name: str = "?") -> None:
    """``additional_files`` patterns match file names only: no paths, no ``..``."""
    for p in patterns:
        if not p or "/" in p or os.sep in p or p in (".", "..") or "\x00" in p:
            raise ValueError("hither function {!r}: additional_files pattern {!r} must be a file name "
                             "pattern like '*.config' (no directories: the patterns are matched against "
                             "file names in the function's directory tree)".format(name, p))


def safe_relpath(rel: str) -> str:
    """Return ``rel`` if it is a plain relative path inside a directory; raise otherwise."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        raise CodeEnvError("unsafe path {!r} in a code environment (absolute or malformed)".format(rel))
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise CodeEnvError("unsafe path {!r} in a code environment (empty, '.' or '..' part)".format(rel))
    return rel


def _skip_dir(directory: str, name: str) -> bool:
    if name.startswith(".") or name == "__pycache__":
        return True
    return os.path.exists(os.path.join(directory, name, "pyvenv.cfg"))


def _walk(top: str, hidden: bool = False):
    """Yield ``(relative path, absolute path)`` of the files under ``top``, sorted, pruned
    (hidden directories, and hidden files unless ``hidden``)."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not _skip_dir(dirpath, d))
        for name in sorted(filenames):
            if name.startswith(".") and not hidden:
                continue
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, top).replace(os.sep, "/"), full


class _Collector:
    def __init__(self, what: str):
        self.what = what
        self.files: Dict[str, Optional[str]] = {}  # path in the environment -> host file (None: empty)
        self.bytes = 0

    def add(self, rel: str, source: Optional[str]) -> None:
        safe_relpath(rel)
        if rel in self.files:
            raise CodeEnvError("{}: two files would land at {!r} in the code environment".format(self.what, rel))
        if source is not None:
            try:
                self.bytes += os.path.getsize(source)
            except OSError:
                return  # a dangling symlink: nothing to take along
        self.files[rel] = source
        if len(self.files) > MAX_FILES or self.bytes > MAX_BYTES:
            raise CodeEnvError(
                "{}: the code environment would hold more than {} files or {} MB; put the function in "
                "a directory of its own (everything under its file's directory is taken along)".format(
                    self.what, MAX_FILES, MAX_BYTES // (1024 * 1024)))


def collect(fn) -> Tuple[Dict[str, Optional[str]], Dict[str, Any]]:
    """The files of ``fn``'s code environment and where the function sits in it.

    Returns ``(files, entry)``: ``files`` maps each path in the environment
    to the host file it comes from (``None`` for a generated empty
    ``__init__.py``); ``entry`` has the function's ``module`` name and
    ``file`` inside the environment.
    """
    loc = fn.location()
    what = "hither function {!r}".format(fn.name)
    file = loc.get("file")
    if not file or not os.path.isfile(file):
        raise CodeEnvError("{}: its source file is unknown or gone, so its code cannot be taken into a "
                           "container (define it at the top level of a .py file)".format(what))
    fdir = os.path.dirname(file)
    module = loc["module"]
    is_init = os.path.basename(file) == "__init__.py"
    if module == "__main__":
        package: List[str] = []
    else:
        parts = module.split(".")
        package = parts if is_init else parts[:-1]
        if not all(p.isidentifier() for p in package):
            raise CodeEnvError("{}: cannot place module {!r} in a code environment".format(what, module))
    prefix = "/".join(package)
    patterns = list(fn.additional_files)
    check_patterns(patterns, fn.name)
    out = _Collector(what)

    def env_path(rel: str) -> str:
        return prefix + "/" + rel if prefix else rel

    for rel, full in _walk(fdir, hidden=bool(patterns)):
        name = rel.rsplit("/", 1)[-1]
        if rel == "__init__.py" and not is_init:
            continue  # the function directory's own __init__ is replaced by an empty one
        # a file a pattern matches (a hidden one only by a pattern that starts with a dot, as a shell's
        # glob: '*' takes no .env), else a .py file that is not hidden
        hidden = name.startswith(".")
        if any(fnmatch.fnmatch(name, p) and (p.startswith(".") or not hidden) for p in patterns) or (
                name.endswith(".py") and not hidden):
            out.add(env_path(rel), full)
    for i in range(1, len(package) + 1):
        init = "/".join(package[:i]) + "/__init__.py"
        if init not in out.files:
            out.add(init, None)

    for lm in fn.local_modules:
        path = os.path.abspath(os.path.join(fdir, os.path.expanduser(lm)))
        stem = os.path.basename(path.rstrip("/"))
        name = stem[:-3] if os.path.isfile(path) and stem.endswith(".py") else stem
        if not os.path.exists(path):
            raise CodeEnvError("{}: local module {!r} does not exist (looked at {})".format(what, lm, path))
        if os.path.isfile(path) and not stem.endswith(".py"):
            raise CodeEnvError("{}: local module {!r} is a file but not a .py file".format(what, lm))
        if not name.isidentifier():
            raise CodeEnvError("{}: local module {!r} cannot be imported under the name {!r}".format(
                what, lm, name))
        if any(p == name or p.startswith(name + "/") or p == name + ".py" for p in out.files):
            raise CodeEnvError("{}: local module {!r} clashes with {!r} already in the code environment".format(
                what, lm, name))
        if os.path.isfile(path):
            out.add(name + ".py", path)
        else:
            for rel, full in _walk(path):
                if rel.endswith(".py"):
                    out.add(name + "/" + rel, full)

    entry = {"module": module, "file": env_path(os.path.relpath(file, fdir).replace(os.sep, "/"))}
    if entry["file"] not in out.files:  # a script without .py (``./runjobs``): the function's own file
        out.add(entry["file"], file)
    return out.files, entry


_cache_lock = threading.Lock()
_cache: Dict[Any, Tuple[Any, Dict[str, Any], float]] = {}
#: Seconds a stored code environment is reused by a submitting process before it is stored again.
REUSE_SECONDS = 600.0


def _signature(files: Dict[str, Optional[str]]) -> Tuple:
    sig = []
    for rel, src in sorted(files.items()):
        if src is None:
            sig.append((rel,))
        else:
            st = os.stat(src)
            sig.append((rel, src, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sig)


def capture(fn, store: Store) -> Dict[str, Any]:
    """Store ``fn``'s code environment; return the spec's ``code`` entry.

    Submitting many jobs of one function looks at the files each time (a
    stat per file) but copies and hashes them only when something changed.
    A function from a notebook takes its shipped source along, as the
    environment's one file.
    """
    if needs_shipping(fn.__wrapped__):
        text = shipped_source(fn.__wrapped__, fn.name).encode("utf-8")
        return _store_manifest(store, {SHIPPED_FILE: store.put_bytes(text)}, {"module": "__main__", "file": SHIPPED_FILE},
                               len(text))
    files, entry = collect(fn)
    # a job submitting jobs of its own module: they run the bytes it runs, not the file as it is now
    # (as jobs without a container do; see capture_source), so its file is that blob here
    submitted = getattr(sys.modules.get(fn.__wrapped__.__module__), "__hither_source__", None)
    sig = (_signature(files), submitted)
    key = (store.path, fn.name, entry["module"], entry["file"])
    with _cache_lock:
        hit = _cache.get(key)
    # reused for REUSE_SECONDS, then stored anew: hither-fs gc never sweeps blobs younger than
    # its grace period (an hour at least by default), so reused blobs are never swept under a job
    if hit is not None and hit[0] == sig and time.monotonic() - hit[2] < REUSE_SECONDS and \
            store.has(hit[1]["manifest"]):
        return dict(hit[1])
    empty = None
    listing: Dict[str, str] = {}
    total = 0
    for rel, src in sorted(files.items()):
        if src is None:
            if empty is None:
                empty = store.put_bytes(b"")
            listing[rel] = empty
        else:
            listing[rel] = capture_source(fn, store) if submitted and rel == entry["file"] else store.put_file(src)
            total += os.path.getsize(src)
    code = _store_manifest(store, listing, entry, total)
    with _cache_lock:
        _cache[key] = (sig, code, time.monotonic())
    return dict(code)


def _store_manifest(store: Store, listing: Dict[str, str], entry: Dict[str, Any], total: int) -> Dict[str, Any]:
    manifest = json.dumps({"format": FORMAT, "files": listing}, indent=1, sort_keys=True).encode("utf-8")
    return {"manifest": store.put_bytes(manifest), "module": entry["module"], "file": entry["file"],
            "files": len(listing), "bytes": total}


_sources: Dict[Tuple[str, Any], Tuple[str, float]] = {}


def capture_source(fn, store: Store) -> str:
    """Store the source of the file that defines ``fn``; return its sha1.

    A worker runs these bytes, not the file as it is when the job starts, and
    the job cache compares them to tell a changed function. The file is read
    at the first ``.run()`` of each function in this process - later edits
    do not change the code this process runs either - and again after a
    reload (a new code object). Later submissions cost nothing but a touch of
    the blob every ``REUSE_SECONDS / 2`` (its mtime keeps ``hither-fs gc``,
    whose grace is at least ``REUSE_SECONDS``, off it). A function from a
    notebook has no such file: its shipped source is stored instead.
    """
    wrapped = fn.__wrapped__
    if needs_shipping(wrapped):
        return store.put_bytes(shipped_source(wrapped, fn.name).encode("utf-8"))
    module = sys.modules.get(wrapped.__module__)
    submitted = getattr(module, "__hither_source__", None)
    if submitted:  # a job submitting jobs of its own module: the bytes it runs, not the file as it is now
        if store.refresh(submitted):
            return submitted
        return store.put_bytes("".join(linecache.getlines(module.__file__)).encode("utf-8"))
    path = fn.location().get("file")
    if not path:
        raise CodeEnvError("hither function {!r}: its source file is unknown".format(fn.name))
    key = (store.path, wrapped.__code__)  # the memo holds the code object: its id is never reused
    now = time.monotonic()
    with _cache_lock:
        hit = _sources.get(key)
    if hit is not None and (now - hit[1] < REUSE_SECONDS / 2 or store.refresh(hit[0])):
        if now - hit[1] >= REUSE_SECONDS / 2:
            _sources[key] = (hit[0], now)
        return hit[0]
    if not os.path.isfile(path):
        raise CodeEnvError("hither function {!r}: its source file {} does not exist (was it defined by exec, or "
                           "its file moved?): define it in a module or script file".format(fn.name, path))
    sha1 = store.put_file(path)
    with _cache_lock:
        _sources[key] = (sha1, now)
    return sha1


def read_manifest(store: Store, sha1: str) -> Dict[str, str]:
    """The ``{path: blob sha1}`` of a stored manifest, every path checked to be safe."""
    with open(store.verified_path(sha1), "rb") as f:
        try:
            manifest = json.loads(f.read().decode("utf-8"))
        except ValueError as exc:
            raise CodeEnvError("code manifest {} is not valid JSON: {}".format(sha1, exc)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(
            manifest.get("files"), dict):
        raise CodeEnvError("code manifest {} has an unknown format".format(sha1))
    for rel, blob in manifest["files"].items():
        safe_relpath(rel)
        if not isinstance(blob, str):
            raise CodeEnvError("code manifest {}: bad entry for {!r}".format(sha1, rel))
    return manifest["files"]


def materialize(root, sha1: str) -> str:
    """Unpack the code environment ``sha1`` under ``code/envs/`` (once per root); return its directory."""
    root.store.blob_path(sha1)  # a sha1, never a path: raises ValueError otherwise
    final = os.path.join(root.layout.code, "envs", sha1[:2], sha1)
    if os.path.isdir(final):
        return final
    files = read_manifest(root.store, sha1)
    makedirs(os.path.dirname(final))
    tmp = temp_name(final)
    try:
        for rel, blob in sorted(files.items()):
            dst = os.path.join(tmp, *rel.split("/"))
            makedirs(os.path.dirname(dst))
            src = root.store.verified_path(blob)
            try:
                os.link(src, dst)
            except OSError:
                copy_new(src, dst)
        makedirs(tmp)  # an environment may be empty
        rename_dir_unless_there(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def runtime_files() -> Dict[str, str]:
    """The files of the in-container ``hither_fs`` package: ``{path: host file}``."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime")
    files = {"hither_fs/__init__.py": os.path.join(here, "standin.py")}
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            files["hither_fs/runtime/" + name] = os.path.join(here, name)
    return files


def materialize_runtime(root) -> str:
    """Put the in-container ``hither_fs`` under ``code/runtime/<sha1>/``; return that directory.

    Named by the hash of its files, so workers of different hither_fs
    versions sharing a root each get their own.
    """
    import hashlib
    files = runtime_files()
    h = hashlib.sha1()
    for rel, src in sorted(files.items()):
        h.update("{}\0{}\0".format(rel, sha1_of_file(src)).encode("utf-8"))
    final = os.path.join(root.layout.code, "runtime", h.hexdigest())
    if os.path.isdir(final):
        return final
    makedirs(os.path.dirname(final))
    tmp = temp_name(final)
    try:
        for rel, src in files.items():
            dst = os.path.join(tmp, *rel.split("/"))
            makedirs(os.path.dirname(dst))
            copy_new(src, dst)
        rename_dir_unless_there(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
