"""``hi.JobCache``: results remembered by the hash of what produced them.

The key of a job is the sha1 of a canonical JSON form of its function name,
version and arguments, where arrays and files count by their content hash and
upstream jobs by their own key (so a whole pipeline is recognised before any
of it runs). An entry is one JSON file, ``<dir>/ab/<key>.json``, holding
the encoded result; arrays and files it refers to live in the cache's store
(the root's own store for ``JobCache()``). A hit reads that one file
(:meth:`JobCache.find`) and writes nothing: the job it answers with is
:class:`hither_fs.submit.CacheHit`. A damaged entry is a miss, and the next
result of its key replaces it.

Two submitters of the same job at the same time - on one node or on several,
with or without working file locks - get one execution: the first to create
the *in-flight marker* ``<dir>/ab/<key>.inflight.0`` (by ``link``, which
refuses to replace an existing file on every shared filesystem) runs the
job; the others read the marker and attach to that job. When that job
fails, the next submitter claims marker ``.1`` the same way, and so on.
"""

import hashlib
import json
import os
import stat
from typing import Any, Dict, Iterator, Optional, Set, Tuple

from . import gc
from .compat import refuse_keywords, tempdir_cache_path
from .root import Root
from .runtime.files import (CorruptFileError, dumps, makedirs, read_json, read_record, register_tree, remove_quietly,
                            temp_name, with_parents, write_new)
from .runtime.layout import is_job_id, make_shards
from .runtime.serialization import blob_refs, decode
from .runtime.store import BlobMissingError, Store
from .trust import cache_entry_reason, cache_reason


#: The canonical JSON of a key (sorted keys, no spaces): one encoder, made once.
_KEY_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=True)
#: ``(name, version)`` -> the end of a key's text after the arguments (the same for every job
#: of a function version; a few hundred at most in a process).
_KEY_TAILS: Dict[Tuple[str, str], str] = {}


def cache_key(name: str, version: str, args: Dict[str, Any], upstream_keys: Dict[str, str]) -> str:
    """sha1 of the canonical form of a job; ``upstream_keys`` maps job ids to keys.

    The canonical form is ``{"args":...,"function":name,"version":version}`` as JSON with
    sorted keys and no spaces; the part after the arguments is made once per function
    version. Upstream jobs count by their key: each ``{"__hither__": "job", "id": ...}`` becomes
    ``{"__hither__": "job", "key": ...}``. The swap is made by JSON's own parser (no recursion
    in Python, which a value nested as deep as allowed would otherwise take far), and the text
    is the same as of a copy rebuilt with the swap: keys of existing entries do not change."""
    def canon(obj: Dict[str, Any]) -> Dict[str, Any]:
        if obj.get("__hither__") == "job" and isinstance(obj.get("id"), str) and obj["id"] in upstream_keys:
            return {"__hither__": "job", "key": upstream_keys[obj["id"]]}
        return obj
    if upstream_keys:
        args = json.loads(json.dumps(args, allow_nan=True), object_hook=canon)
    tail = _KEY_TAILS.get((name, version))
    if tail is None:
        if len(_KEY_TAILS) > 10000:
            _KEY_TAILS.clear()
        tail = _KEY_TAILS[(name, version)] = ',"function":{},"version":{}}}'.format(
            _KEY_JSON.encode(name), _KEY_JSON.encode(version))
    return hashlib.sha1(('{"args":' + _KEY_JSON.encode(args) + tail).encode("utf-8")).hexdigest()


def _refuse_if(reason: Optional[str], path: str) -> None:
    if reason:
        raise PermissionError("refusing the job cache at {}: {}. A result planted there would be taken for "
                              "yours: only the cache's owner and its group may write it (chmod o-w, or choose "
                              "another directory)".format(path, reason))


def _tempdir_cache() -> str:
    """Make (0700) and return this user's cache directory in the temporary directory; refuse
    one that is a link, not a directory, or someone else's (made there first)."""
    path = tempdir_cache_path()
    makedirs(path)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError("refusing the job cache at {} (hi.JobCache(use_tempdir=True)): it is {}, not a directory "
                              "of yours; remove it, or give hi.JobCache(path) a directory of your own".format(
                                  path, "a symbolic link" if stat.S_ISLNK(st.st_mode) else
                                  "not a directory" if not stat.S_ISDIR(st.st_mode) else
                                  "owned by uid {}".format(st.st_uid)))
    return path


def code_hash(spec: Dict[str, Any]) -> Optional[str]:
    """What identifies the code of a job: the sha1 of its function's file as submitted, or of
    its code environment for a container job (None for jobs from before it was recorded)."""
    code = spec.get("code")
    if isinstance(code, dict) and code.get("manifest"):
        return code["manifest"]
    return (spec.get("function") or {}).get("source")


#: :meth:`JobCache.find`'s value of a result that refers to blobs: decoded when it is read.
NOT_DECODED = object()
#: ``(path, uid, gid, mode, cache gid)`` of the directories and entries of caches of their own
#: found trustworthy in this process (see :meth:`JobCache._check_trust`).
_trusted: Set[Tuple[str, int, int, int, int]] = set()


class JobCache:
    """A job cache. ``JobCache()`` keeps entries in the root; ``JobCache(path)``
    in a directory of its own (for example a lab's shared cache).

    hither's spellings: ``use_tempdir=True`` is a directory of this user's in the
    temporary directory (:func:`hither_fs.compat.tempdir_cache_path`); ``readonly=True``
    is refused (workers write the entries of the jobs they run); kachery feeds
    (``feed_uri=``, ``feed_name=``) and ``database=`` are refused, naming the replacement.
    """

    def __init__(self, path: Optional[str] = None, *, use_tempdir: Optional[bool] = None, readonly: bool = False,
                 **hither_options: Any):
        if hither_options:
            refuse_keywords("hi.JobCache", hither_options)
        if readonly:
            raise ValueError("hi.JobCache(readonly=True) is not supported: the worker that runs a job writes its "
                             "entry, and hither_fs cannot keep it from doing so. Leave job_cache unset in the "
                             "hi.Config blocks whose results should not be cached")
        if use_tempdir:
            if path is not None:
                raise ValueError("hi.JobCache: give path or use_tempdir=True, not both")
            path = _tempdir_cache()
        self.path = None if path is None else os.path.abspath(os.path.expanduser(str(path)))
        if self.path is not None and os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError("job cache path {} is a file, not a directory".format(self.path))
        if self.path is not None:
            _refuse_if(cache_reason(self.path), self.path)
        self._registered = False
        self._store: Optional[Store] = None

    def __repr__(self):
        return "JobCache({})".format(repr(self.path) if self.path else "in the root")

    # -- where -------------------------------------------------------------

    def directory(self, root) -> str:
        if self.path is None:
            return root.layout.cache
        if not self._registered:
            makedirs(self.path)
            register_tree(self.path, bool(os.stat(self.path).st_mode & 0o2000))
            if not os.path.isdir(os.path.join(self.path, "ff")):
                make_shards(self.path)  # once, before several nodes race to make them
            self._registered = True
        return self.path

    def store(self, root) -> Store:
        """Where the blobs of the entries' results are: the root's store for ``JobCache()``."""
        if self.path is None:
            return root.store
        if self._store is None:
            self._store = Store(os.path.join(self.path, "store"))
        return self._store

    def _entry_path(self, directory: str, key: str, suffix: str = ".json") -> str:
        return os.path.join(directory, key[:2], key + suffix)

    # -- entries -----------------------------------------------------------

    def lookup(self, root, key: str) -> Optional[Dict[str, Any]]:
        """The entry for ``key``, with its blobs present in the root's store, or None.

        A damaged entry, or one whose blobs are missing or damaged, counts as
        a miss (and is reported by ``hither-fs fsck``), never as a result.
        (A job that takes the entry's outcome as its own, as a compute resource
        does, needs the blobs in the root; a cache hit answered in this process
        reads them where they are: :meth:`find`.)
        """
        found = self.find(root, key)
        if found is None:
            return None
        entry = found[0]
        if "value" in entry and self.path is not None:
            try:
                self._copy_blobs(self.store(root), root.store, entry["value"])
            except Exception:
                return None
        return entry

    def find(self, root, key: str, name: Optional[str] = None,
             version: Optional[str] = None) -> Optional[Tuple[Dict[str, Any], Any]]:
        """``(entry, value)`` for ``key``, or None: a cache hit, found by reading one file.

        Nothing is written but the mtime of the blobs the result refers to (made young
        to ``hither-fs gc`` and to :meth:`reduce_size`, which keep young blobs, while the
        hit may still read them). ``value`` is the result decoded once, when it refers to
        no blob (its check: an entry whose value does not decode is damaged), else
        :data:`NOT_DECODED` (its blobs were checked against their hashes instead).

        A miss is None: no entry; and also an entry that is damaged - not JSON, not
        this key's, of another function or version (``name``, ``version``, when
        given), naming no job, or whose value does not decode or refers to blobs
        that are missing or damaged (``hither-fs fsck`` reports those). A cache of
        its own (``JobCache(path)``) whose directory, shard or entry someone else
        could have written raises ``PermissionError`` instead.
        """
        directory = self.directory(root)
        path = self._entry_path(directory, key)
        if self.path is not None:  # a cache of its own: believed only if nobody else could write the entry
            st = os.stat(directory)
            self._check_trust(directory, st, st.st_gid)
            try:
                self._check_trust(os.path.dirname(path), os.stat(os.path.dirname(path)), st.st_gid)
            except FileNotFoundError:
                return None
        try:
            entry, entry_st = read_record(path)
        except Exception:  # missing, or damaged
            return None
        if self.path is not None:
            self._check_trust(path, entry_st, st.st_gid)  # the file read, by its fstat
        return self._check_entry(root, entry, key, name, version)

    def _check_entry(self, root, entry: Any, key: str, name: Optional[str],
                     version: Optional[str]) -> Optional[Tuple[Dict[str, Any], Any]]:
        """``(entry, value)`` if ``entry`` (as read) may answer ``key`` (see :meth:`find`), else None."""
        if (not isinstance(entry, dict) or entry.get("key") != key
                or not (isinstance(entry.get("job_id"), str) and is_job_id(entry["job_id"]))
                or (name is not None and entry.get("function") != name)
                or (version is not None and entry.get("version") != version)):
            return None
        if "value" not in entry:
            error = entry.get("error")
            return (entry, NOT_DECODED) if isinstance(error, dict) else None
        store = self.store(root)
        try:
            refs = list(blob_refs(entry["value"]))
            if not refs:
                return entry, decode(entry["value"], store)
            for sha1, ext in refs:
                # made young first, then checked: a blob gc removes meanwhile is a miss
                if not store.refresh(sha1, ext):
                    return None
                store.verified_path(sha1, ext)
        except Exception:
            return None
        return entry, NOT_DECODED

    def _check_trust(self, path: str, st: os.stat_result, gid: int) -> None:
        """Raise ``PermissionError`` if someone else could have written ``path`` (see
        :func:`~hither_fs.trust.cache_entry_reason`). The verdict depends only on the
        owner, group and mode: remembered for each, so a lookup pays a ``stat``, not
        the user and group look-ups."""
        facts = (path, st.st_uid, st.st_gid, st.st_mode, gid)
        if facts not in _trusted:
            _refuse_if(cache_entry_reason(path, st, gid), self.path or path)
            if len(_trusted) > 10000:
                _trusted.clear()
            _trusted.add(facts)

    def record(self, root, key: str, spec: Dict[str, Any], outcome: Dict[str, Any], is_error: bool,
               replace: bool = False) -> bool:
        """Write the entry for a finished job; return whether this call wrote it.

        An entry is written once per key (concurrent writers: the first wins),
        except that a result replaces a cached error or a damaged entry (one that
        :meth:`find` takes for a miss), and ``replace`` (a ``force_run`` job)
        replaces whatever was there.
        """
        directory = self.directory(root)
        path = self._entry_path(directory, key)
        if os.path.exists(path) and not replace:
            if is_error:
                return False
            try:
                existing = read_json(path)
            except CorruptFileError:
                existing = None
            found = self._check_entry(root, existing, key, spec["function"]["name"], spec["function"]["version"])
            if found is not None and "value" in found[0]:
                return False
            replace = True  # a result in place of an error or damage
        entry = {"key": key, "function": spec["function"]["name"], "version": spec["function"]["version"],
                 "job_id": spec["id"], "root": root.path}
        if code_hash(spec):
            entry["code"] = code_hash(spec)
        if is_error:
            entry["error"] = outcome
        else:
            self._copy_blobs(root.store, self.store(root), outcome["value"], repair=replace)
            entry["value"] = outcome["value"]
        tmp = temp_name(path)
        with_parents(lambda: write_new(tmp, dumps(entry)), os.path.dirname(path))
        try:
            if replace:
                os.replace(tmp, path)
                return True
            os.link(tmp, path)  # fails if another writer got there first: one entry per key
            return True
        except FileExistsError:
            return False
        finally:
            remove_quietly(tmp)

    def copy_blobs_to(self, root, value: Any) -> None:
        """Make the blobs of a result of this cache present in the root's store."""
        self._copy_blobs(self.store(root), root.store, value)

    def _copy_blobs(self, src: Store, dst: Store, value: Any, repair: bool = False) -> None:
        """Make the blobs of ``value`` present in ``dst``; ``repair``: replace those that are
        there but damaged (the entry being replaced was a miss for it)."""
        for sha1, ext in blob_refs(value):
            if src.path == dst.path:
                # about to be recorded again: made young to hither-fs gc first, then checked
                if not src.refresh(sha1, ext):
                    raise BlobMissingError("blob {} is missing from the store at {}".format(sha1, src.path))
                src.verified_path(sha1, ext)
                continue
            if repair and dst.has(sha1, ext):
                try:
                    dst.verified_path(sha1, ext)
                except (CorruptFileError, BlobMissingError, OSError):
                    remove_quietly(dst.blob_path(sha1, ext))
            dst.copy_blob_from(src, sha1, ext)

    def reduce_size(self, bytes_limit: Any = None, items_limit: Optional[int] = None, age_limit: Any = None,
                    root=None) -> Tuple[int, int]:
        """Remove the oldest entries until the cache holds at most ``items_limit`` entries
        and ``bytes_limit`` bytes (``'10G'`` works; entries and their blobs) and none older
        than ``age_limit`` (seconds, ``'30d'`` or a ``timedelta``); then remove the blobs no
        entry left refers to. Nothing younger than an hour is removed (a job may be
        recording it just now). Returns how many entries and blobs went.

        For ``JobCache()`` (entries in the root) only entries go here: the root's blobs
        are swept by ``hither-fs gc``, which knows what jobs refer to.
        """
        if self.path is None:
            root = root if root is not None else Root.get()
            directory, store = root.layout.cache, None
        else:
            directory = self.directory(None)
            store = Store(os.path.join(self.path, "store"))
        entries, blobs = gc.reduce_cache(
            directory, store, None if bytes_limit is None else gc.parse_size(bytes_limit), items_limit,
            None if age_limit is None else gc.parse_age(age_limit))
        return len(entries), len(blobs)

    # -- in flight -----------------------------------------------------------
    #
    # The markers of a key are numbered, <key>.inflight.0, .1, ...: the highest one names
    # the job computing the key now. A submitter that finds the newest marker's job
    # failed (or gone) claims the next number, by link - so of the submitters that find
    # it so at once, one wins and the others attach to the winner's job. Markers are
    # never replaced or put back, so there is no moment when none stands. The job that
    # ends removes the markers up to its own.

    def _marker(self, root, key: str, n: int) -> str:
        return self._entry_path(self.directory(root), key, ".inflight.{}".format(n))

    def _markers(self, root, key: str, look_past: int = 0) -> Iterator[Tuple[int, str, Dict[str, Any]]]:
        """``(n, path, marker)`` of the markers of ``key``, 0 upwards (a damaged one as ``{}``),
        up to the first missing number - or past ``look_past`` missing ones in a row."""
        n, missing = 0, 0
        while True:
            path = self._marker(root, key, n)
            try:
                marker = read_json(path, None, missing_ok=True)
            except CorruptFileError:
                marker = {}
            if marker is None:
                missing += 1
                if missing > look_past:
                    return
            else:
                missing = 0
                yield n, path, marker if isinstance(marker, dict) else {}
            n += 1

    def in_flight(self, root, key: str) -> Tuple[int, Optional[str]]:
        """``(n, job id)`` of the newest marker of ``key`` in this root (``(-1, None)``:
        none). A marker that cannot be read, or that names a job of another root,
        counts as a job that is not there."""
        n, job_id = -1, None
        for n, _, marker in self._markers(root, key):
            job_id = marker.get("job_id") if marker.get("root") == root.path else None
        return n, job_id

    def claim_in_flight(self, root, key: str, n: int, job_id: str) -> bool:
        """Become the job computing ``key`` with marker number ``n``: True unless another
        job got that number first."""
        path = self._marker(root, key, n)
        tmp = temp_name(path)
        with_parents(lambda: write_new(tmp, dumps({"job_id": job_id, "root": root.path})), os.path.dirname(path))
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            remove_quietly(tmp)

    def release_in_flight(self, root, key: str, job_id: str) -> None:
        """Remove the markers of ``key`` up to the one naming ``job_id`` - once its outcome
        is in the cache, where submitters look first. Newest first, so that the numbers
        still standing always start at 0; a submitter that claims a number meanwhile finds
        the entry when it looks again (see :func:`hither_fs.submit._create_once`).

        If a newer marker stands (in a lab cache, another root's job of the same key,
        started later), this job's stay: removing them would leave that one above a gap,
        where no scan from 0 finds it, for ever; its job removes them with its own. A gap
        left all the same (by a newer job claimed while these were removed) is looked past."""
        seen = []
        for n, path, marker in self._markers(root, key, look_past=_GAP_LOOK):
            seen.append(path)
            if marker.get("job_id") == job_id:
                if not os.path.lexists(self._marker(root, key, n + 1)):
                    for p in reversed(seen):
                        remove_quietly(p)
                return


#: Missing marker numbers a release looks past (see :meth:`JobCache.release_in_flight`).
_GAP_LOOK = 1


def record_outcome(root, spec: Dict[str, Any], status: str, result: Optional[Dict[str, Any]] = None,
                   error: Optional[Dict[str, Any]] = None) -> None:
    """After a commit: remember the outcome in the job's cache, if it has one, and then
    remove its in-flight markers."""
    cache_spec = spec.get("cache")
    if not cache_spec or status is None:
        return
    cache = JobCache(cache_spec.get("path"))
    if status == "finished" and result is not None:
        cache.record(root, spec["key"], spec, result, is_error=False, replace=bool(cache_spec.get("replace")))
    elif status == "error" and error is not None and cache_spec.get("failing"):
        cache.record(root, spec["key"], spec, error, is_error=True)
    else:
        return  # its markers stay: the next submitter of the key claims the next number
    cache.release_in_flight(root, spec["key"], spec["id"])

