"""A tiny read-only container registry on the loopback interface, for the container tests.

Apptainer pulls ``docker://127.0.0.1:PORT/REPO:TAG`` from it (with
``APPTAINER_NOHTTPS=1``), so the tests can pull a real image without the
internet - and count how often it was pulled. The image is an OCI image of
one layer made from a root filesystem directory (the test image).

Standard library only.
"""

import hashlib
import http.server
import json
import os
import re
import tarfile
import threading
from collections import Counter

REPO = "hither/test"


def _digest_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _put_blob(blobs, data=None, path=None):
    if path is None:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest[7:]), "wb") as f:
            f.write(data)
        return digest, len(data)
    digest = _digest_of(path)
    size = os.path.getsize(path)
    os.replace(path, os.path.join(blobs, digest[7:]))
    return digest, size


def make_oci_layout(rootfs, dest, tag="latest"):
    """Write an OCI image layout of ``rootfs`` (a directory) to ``dest``."""
    blobs = os.path.join(dest, "blobs", "sha256")
    os.makedirs(blobs)
    layer_tmp = os.path.join(dest, "layer.tar")

    def owned_by_root(info):
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(layer_tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in dirnames + sorted(filenames):
                full = os.path.join(dirpath, name)
                info = tf.gettarinfo(full, os.path.relpath(full, rootfs))
                if info is None or not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
                    continue
                if info.isfile():
                    try:
                        with open(full, "rb") as f:
                            tf.addfile(owned_by_root(info), f)
                    except PermissionError:
                        continue
                else:
                    tf.addfile(owned_by_root(info))
    layer, layer_size = _put_blob(blobs, path=layer_tmp)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [layer]}}).encode()
    config_digest, config_size = _put_blob(blobs, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer,
                    "size": layer_size}]}).encode()
    manifest_digest, manifest_size = _put_blob(blobs, manifest)
    with open(os.path.join(dest, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
    with open(os.path.join(dest, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion": "1.0.0"}')
    return layer


class Registry:
    """Serves an OCI layout at ``docker://127.0.0.1:PORT/hither/test:TAG``; counts requests."""

    def __init__(self, layout):
        with open(os.path.join(layout, "index.json")) as f:
            index = json.load(f)
        self.tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
        self.blobs = os.path.join(layout, "blobs", "sha256")
        self.requests = Counter()  # (method, kind, ref) -> count
        self._lock = threading.Lock()
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, body=b"", ctype="application/json", headers=(), path=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(os.path.getsize(path) if path else len(body)))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if path:
                    with open(path, "rb") as f:
                        for chunk in iter(lambda: f.read(1 << 20), b""):
                            self.wfile.write(chunk)
                else:
                    self.wfile.write(body)

            def do_GET(self):
                p = self.path.split("?")[0]
                if p in ("/v2", "/v2/"):
                    return self._send(200, b"{}")
                m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", p)
                if not m or m.group(1) != REPO:
                    return self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
                kind, ref = m.group(2), m.group(3)
                with registry._lock:
                    registry.requests[(self.command, kind, ref)] += 1
                if kind == "manifests":
                    desc = registry.tags.get(ref) or next(
                        (d for d in registry.tags.values() if d["digest"] == ref), None)
                    if desc is None:
                        return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                    return self._send(200, ctype=desc["mediaType"],
                                      path=os.path.join(registry.blobs, desc["digest"][7:]),
                                      headers=[("Docker-Content-Digest", desc["digest"])])
                blob = os.path.join(registry.blobs, ref.split(":", 1)[-1])
                if not os.path.isfile(blob):
                    return self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
                return self._send(200, ctype="application/octet-stream", path=blob,
                                  headers=[("Docker-Content-Digest", ref)])

            do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, tag="latest"):
        return "docker://127.0.0.1:{}/{}:{}".format(self.port, REPO, tag)

    def count(self, method, kind, ref):
        with self._lock:
            return self.requests[(method, kind, ref)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
