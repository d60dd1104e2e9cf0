"""Turning argument and result values into JSON plus store blobs, and back.

Allowed values: ``None``, ``bool``, ``int``, ``float``, ``str``, numpy
arrays (any non-object dtype, shape and memory order), numpy scalars,
lists, tuples (they stay tuples), dicts with string keys, :class:`File`,
all nested; on the submitting side also ``Job`` objects (pipelines).
Anything else raises ``TypeError`` naming where it sits, for example
``argument 'x'[2]['w']: set is not allowed``.

Values that JSON cannot express are tagged with a ``"__hither__"`` key::

    {"__hither__": "ndarray", "sha1": "...", "dtype": "float64", "shape": [4, 3]}
    {"__hither__": "tuple", "items": [...]}
    {"__hither__": "scalar", "dtype": "int64", "value": 14}
    {"__hither__": "file", "sha1": "...", "name": "data.bin"}
    {"__hither__": "job", "id": "3f9a..."}
    {"__hither__": "dict", "items": {...}}   (a user dict that has the key "__hither__")

Standard library and numpy only: this module also runs inside job containers.
"""

import os
from typing import Any, Callable, Iterator, Optional, Tuple

import numpy as np

from .store import Store, sha1_of_file

TAG = "__hither__"


class File:
    """A file that travels with a job: stored by content in the root's store.

    ``hi.File(path)`` wraps a local file; when it is passed to ``.run()`` (or
    returned by a job) its bytes are copied into the store and it is known by
    its sha1 from then on. ``.path`` is where the bytes can be read.
    """

    def __init__(self, path: str, *, sha1: Optional[str] = None, name: Optional[str] = None):
        self.path = os.path.abspath(path)
        self.name = name or os.path.basename(path)
        self._sha1 = sha1

    @property
    def sha1(self) -> str:
        if self._sha1 is None:
            self._sha1 = sha1_of_file(self.path)
        return self._sha1

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def __eq__(self, other):
        return isinstance(other, File) and other.sha1 == self.sha1

    def __hash__(self):
        return hash(self.sha1)

    def __repr__(self):
        return "File({!r}, sha1={})".format(self.name, self._sha1 or "?")


def _where_item(where: str, key: Any) -> str:
    return "{}[{!r}]".format(where, key)


def encode(value: Any, store: Store, where: str, other: Optional[Callable[[Any, str], Any]] = None) -> Any:
    """Encode ``value`` as JSON, writing arrays and files into ``store``.

    ``other(value, where)`` may encode extra types (the submitting side uses it
    for ``Job`` objects); it returns ``NotImplemented`` to refuse a value.
    """
    if value is None or (isinstance(value, (bool, str, int, float)) and not isinstance(value, np.generic)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("{}: object arrays are not allowed (dtype {})".format(where, value.dtype))
        sha1 = store.put_array(value)
        return {TAG: "ndarray", "sha1": sha1, "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, np.generic):
        if isinstance(value, (np.bool_, np.integer, np.floating)):
            return {TAG: "scalar", "dtype": str(value.dtype), "value": value.item()}
        if value.dtype.hasobject:
            raise TypeError("{}: numpy object scalars are not allowed".format(where))
        sha1 = store.put_array(np.asarray(value))
        return {TAG: "scalar", "dtype": str(value.dtype), "sha1": sha1}
    if isinstance(value, list):
        return [encode(v, store, _where_item(where, i), other) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [encode(v, store, _where_item(where, i), other)
                                        for i, v in enumerate(value)]}
    if isinstance(value, dict):
        items = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError("{}: dict key {!r} is a {}, only str keys are allowed".format(
                    where, k, type(k).__name__))
            items[k] = encode(v, store, _where_item(where, k), other)
        return {TAG: "dict", "items": items} if TAG in items else items
    if isinstance(value, File):
        if not os.path.isfile(value.path):
            raise FileNotFoundError("{}: file {} does not exist".format(where, value.path))
        sha1 = store.put_file(value.path)
        value._sha1 = sha1
        return {TAG: "file", "sha1": sha1, "name": value.name}
    if other is not None:
        encoded = other(value, where)
        if encoded is not NotImplemented:
            return encoded
    raise TypeError("{}: {} is not allowed".format(where, type(value).__name__))


def decode(obj: Any, store: Store, job_value: Optional[Callable[[str], Any]] = None) -> Any:
    """Inverse of :func:`encode`. ``job_value(id)`` resolves upstream job results."""
    if isinstance(obj, list):
        return [decode(v, store, job_value) for v in obj]
    if not isinstance(obj, dict):
        return obj
    kind = obj.get(TAG)
    if kind is None:
        return {k: decode(v, store, job_value) for k, v in obj.items()}
    if kind == "ndarray":
        array = store.get_array(obj["sha1"])
        return array
    if kind == "scalar":
        dtype = np.dtype(obj["dtype"])
        if "sha1" in obj:
            return store.get_array(obj["sha1"])[()]
        return dtype.type(obj["value"])
    if kind == "tuple":
        return tuple(decode(v, store, job_value) for v in obj["items"])
    if kind == "dict":
        return {k: decode(v, store, job_value) for k, v in obj["items"].items()}
    if kind == "file":
        return File(store.verified_path(obj["sha1"]), sha1=obj["sha1"], name=obj.get("name"))
    if kind == "job":
        if job_value is None:
            raise ValueError("a job reference cannot be decoded here")
        return job_value(obj["id"])
    raise ValueError("unknown value tag {!r}".format(kind))


def blob_refs(value: Any) -> Iterator[Tuple[str, str]]:
    """``(sha1, ext)`` of every store blob an encoded value refers to (``.npy`` for arrays and
    scalars, ``''`` for files)."""
    for ref in walk_refs(value):
        if "sha1" in ref:
            yield ref["sha1"], "" if ref[TAG] == "file" else ".npy"


def walk_refs(obj: Any):
    """Yield every tagged reference (arrays, files, jobs) inside an encoded value."""
    if isinstance(obj, list):
        for v in obj:
            yield from walk_refs(v)
    elif isinstance(obj, dict):
        kind = obj.get(TAG)
        if kind in ("ndarray", "file", "job") or (kind == "scalar" and "sha1" in obj):
            yield obj
        elif kind in ("tuple",):
            yield from walk_refs(obj["items"])
        elif kind == "dict":
            yield from walk_refs(list(obj["items"].values()))
        else:
            yield from walk_refs(list(obj.values()))
