"""Running a job's container with Docker: the ``docker`` command, kept apart from the core.

:mod:`hither_fs.containers` decides what runs (the image, the code
environment, the in-container runner's command line); this module only
speaks to Docker:

- :func:`ensure_image` pulls an image once per host. Docker keeps images per
  daemon, so the lock and the record are per host too:
  ``ROOT/images/docker/<host>/<image>.lock`` and ``<image>.json`` (the
  reference, Docker's image id, when it was pulled and how long it took).
  A failed pull is remembered for a minute, so that the other jobs waiting for
  the same image fail at once with Docker's words instead of each pulling again.
- :func:`run_arguments` is the ``docker run`` command line of one attempt:
  the job runs as the submitting user's uid, gid and groups (files it writes
  in the root stay the user's), with ``--network none`` unless the job asks
  for a network, with the CPU, memory and GPU limits of its ``job_resources``,
  and named after the attempt (``hither_fs-<job id>.<gen>``) with its id in a
  ``--cidfile`` in the attempt's scratch directory.
- :func:`kill_container` stops that container. A ``docker run`` client that is
  killed leaves its container running, so the worker calls this on a timeout
  or a cancel, and for the scratch directories of workers that were killed.
"""

import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

import filelock

from .errors import ContainerError
from .pull_failures import forget_failure, raise_if_failed_lately, remember_failure
from .runtime.files import HOST, file_mode, makedirs, read_text_tail, write_json

log = logging.getLogger("hither_fs.docker")

#: The file ``docker run --cidfile`` writes in the attempt's scratch directory.
CIDFILE = "container.id"
#: What ``docker run`` itself prints, in the attempt's scratch directory (made before it starts).
SAID = "docker.txt"
#: How long one ``docker`` call other than a pull or a run may take (seconds).
CALL_TIMEOUT = 120.0
#: How long a pull may take, and a worker wait for another's pull of the same image (seconds).
PULL_TIMEOUT = 3600.0


def docker_executable() -> str:
    """Path of the ``docker`` command; a clear error if there is none."""
    exe = shutil.which("docker")
    if exe is None:
        raise ContainerError(
            "no 'docker' command on PATH on host {}: install Docker, or run container jobs with "
            "Apptainer/Singularity (HITHER_USE_SINGULARITY=TRUE)".format(HOST))
    return exe


def image_reference(image: str) -> str:
    """The Docker reference of a container setting: ``docker://ubuntu:22.04`` -> ``ubuntu:22.04``.

    A ``.sif`` file, a sandbox directory or another scheme is Apptainer's: refused by name.
    """
    if image.startswith("docker://"):
        ref = image[len("docker://"):]
        if ref and not re.search(r"\s", ref):
            return ref
    raise ContainerError(
        "Docker runs docker:// images only, not {}: give a docker:// image, or run this job with "
        "Apptainer/Singularity (hi.Config(container_runtime='singularity') or HITHER_USE_SINGULARITY=TRUE)"
        .format(image))


def _call(args: List[str], timeout: Optional[float] = CALL_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([docker_executable(), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def _words(proc: subprocess.CompletedProcess) -> str:
    """What Docker said, on one line."""
    text = (proc.stderr or "").strip() or (proc.stdout or "").strip() or "exit code {}".format(proc.returncode)
    return " ".join(text.split())[:2000]


def image_id(ref: str) -> Optional[str]:
    """Docker's id of a local image, or None if this host's daemon does not have it."""
    try:
        proc = _call(["image", "inspect", "--format", "{{.Id}}", ref])
    except subprocess.TimeoutExpired:
        raise ContainerError("the Docker daemon on host {} did not answer in {:.0f} s".format(
            HOST, CALL_TIMEOUT)) from None
    if proc.returncode == 0:
        return proc.stdout.strip()
    if "no such image" in (proc.stderr + proc.stdout).lower():
        return None
    raise ContainerError("docker on host {} cannot inspect image {}: {}".format(HOST, ref, _words(proc)))


def _record_path(root, ref: str) -> str:
    """``ROOT/images/docker/<host>/<readable name>-<hash of the reference>`` (no suffix)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", ref).strip("._-")[:60] or "image"
    digest = hashlib.sha1(ref.encode("utf-8")).hexdigest()[:12]
    return os.path.join(root.layout.images, "docker", HOST, "{}-{}".format(name, digest))


def ensure_image(root, url: str) -> Dict[str, Any]:
    """Make sure this host's Docker has the image; pull it (once per host) if not.

    Returns facts for the job's runtime record: ``image_id``, ``image_pulled``,
    and ``image_pull_seconds`` or ``image_wait_seconds``.
    """
    ref = image_reference(url)
    known = image_id(ref)
    if known:
        return {"image_ref": ref, "image_id": known, "image_pulled": False}
    base = _record_path(root, ref)
    directory = os.path.dirname(base)
    makedirs(directory)
    waited = time.monotonic()
    lock = filelock.FileLock(base + ".lock", mode=file_mode(directory), thread_local=False)
    try:
        lock.acquire(timeout=PULL_TIMEOUT)
    except filelock.Timeout:
        raise ContainerError("waited {:.0f} s for another worker on host {} to pull {}; giving up".format(
            PULL_TIMEOUT, HOST, url)) from None
    try:
        return _pull_locked(url, ref, base, directory, time.monotonic() - waited)
    finally:
        lock.release()


def _pull_locked(url: str, ref: str, base: str, directory: str, waited: float) -> Dict[str, Any]:
    """The pull itself, under the host's lock for the image: unless the image arrived meanwhile
    or a pull of it failed a moment ago."""
    known = image_id(ref)
    if known:  # pulled by another worker of this host while this one waited
        facts = {"image_ref": ref, "image_id": known, "image_pulled": False}
        if waited > 0.5:
            facts["image_wait_seconds"] = round(waited, 3)
        return facts
    raise_if_failed_lately(base + ".failed.json", url)
    start = time.monotonic()
    try:
        proc = _call(["pull", "--quiet", ref], timeout=PULL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ContainerError("docker pull {} did not finish in {:.0f} s on host {}".format(
            ref, PULL_TIMEOUT, HOST)) from None
    seconds = round(time.monotonic() - start, 3)
    if proc.returncode != 0:
        message = "could not pull container image {}: {}".format(url, _words(proc))
        remember_failure(base + ".failed.json", url, message)
        raise ContainerError(message)
    known = image_id(ref)
    if not known:
        raise ContainerError("docker pull {} succeeded but host {} has no such image".format(ref, HOST))
    write_json(base + ".json", {"url": url, "ref": ref, "image_id": known, "host": HOST,
                                "pulled": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "pull_seconds": seconds})
    forget_failure(base + ".failed.json")
    return {"image_ref": ref, "image_id": known, "image_pulled": True, "image_pull_seconds": seconds}


def container_name(out_dir: str) -> str:
    """The attempt's container name: ``hither_fs-`` and its scratch directory's name (``<job id>.<gen>``)."""
    return "hither_fs-" + os.path.basename(os.path.normpath(out_dir))


def run_arguments(ref: str, command: List[str], env: Dict[str, str], out_dir: str, binds: List[Dict[str, Any]], *,
                  cpus: Optional[float] = None, memory_gb: Optional[float] = None, gpus: Any = None,
                  network: bool = False, labels: Optional[Dict[str, str]] = None) -> List[str]:
    """The ``docker run`` command line (without the ``docker`` executable) of one attempt.

    ``binds``: ``{"path": ..., "readonly": bool}``, each bound at its host path.
    ``gpus``: a number of GPUs or ``"all"``. ``command[0]`` becomes the entrypoint,
    so an image's own ``ENTRYPOINT`` does not wrap the runner.
    """
    args = ["run", "--rm", "--name", container_name(out_dir), "--cidfile", os.path.join(out_dir, CIDFILE),
            "--user", "{}:{}".format(os.getuid(), os.getgid())]
    for gid in sorted(set(os.getgroups()) - {os.getgid()}):
        args += ["--group-add", str(gid)]
    args += ["--network", "bridge" if network else "none", "--init"]
    for key, value in sorted((labels or {}).items()):
        args += ["--label", "{}={}".format(key, value)]
    if cpus:
        args += ["--cpus", "{:g}".format(cpus)]
    if memory_gb:
        args += ["--memory", str(int(memory_gb * 1024 ** 3))]
    if gpus:
        args += ["--gpus", gpus if gpus == "all" else str(int(gpus))]
    for bind in binds:
        args += ["--mount", "type=bind,source={0},target={0}{1}".format(
            bind["path"], ",readonly" if bind.get("readonly") else "")]
    for key, value in sorted(dict(env, HOME=out_dir).items()):
        args += ["--env", "{}={}".format(key, value)]
    return args + ["--workdir", out_dir, "--entrypoint", command[0], ref] + command[1:]


def run(args: List[str], out_dir: str) -> Tuple[int, str]:
    """Run ``docker`` with ``args``: its exit code, and what Docker (or the container, outside
    the job's own console files) printed, kept in ``out_dir``'s ``docker.txt``."""
    said_path = os.path.join(out_dir, SAID)
    with open(said_path, "ab") as said:
        code = subprocess.run([docker_executable(), *args], stdin=subprocess.DEVNULL, stdout=said,
                              stderr=subprocess.STDOUT).returncode
    return code, read_text_tail(said_path, 64 * 1024).strip()


def kill_container(out_dir: str) -> bool:
    """Stop the container of the attempt whose scratch directory is ``out_dir``, if it has one.

    True if a container was asked to stop. Never raises: the worker calls this
    while ending a run, and a daemon that is gone has nothing left to stop.
    """
    try:
        with open(os.path.join(out_dir, CIDFILE)) as f:
            target = f.read().strip()
    except OSError:
        target = ""
    if not re.fullmatch(r"[0-9a-f]{12,64}", target):
        if not os.path.exists(os.path.join(out_dir, SAID)):
            return False  # no docker run started here
        target = container_name(out_dir)  # killed before Docker wrote the id: the name is known
    try:
        proc = _call(["rm", "--force", target], timeout=20)  # the worker's loop waits for it
    except (ContainerError, OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not stop Docker container %s of %s: %s", target[:20], out_dir, exc)
        return False
    if proc.returncode != 0 and "no such container" not in (proc.stderr or "").lower():
        log.warning("could not stop Docker container %s of %s: %s", target[:20], out_dir, _words(proc))
        return False
    return True
