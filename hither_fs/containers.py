"""Running a job inside a container: Singularity/Apptainer through spython, or Docker.

A worker runs a containerized job in a forked child process of its own (see
:mod:`hither_fs.attempts`); that child calls
:func:`run_container_attempt`, which chooses the runtime
(:func:`choose_runtime`: the one the submitter asked for, else Apptainer
where it exists, else Docker) and, for Apptainer,

1. finds the image: a ``docker://`` (``library://``, ``oras://``,
   ``shub://``, ``https://``) image is pulled once per root into
   ``ROOT/images/`` (:func:`pulled_image`), a local ``.sif`` file or sandbox
   directory is used where it is;
2. unpacks the job's code environment and the stand-in ``hither_fs``
   package under ``ROOT/code/`` (:mod:`hither_fs.codeenv`);
3. runs ``python3 -m hither_fs.runtime.execute`` in the container with
   ``spython``'s ``Client.execute``: ``--containall --cleanenv`` (no host
   environment, private ``/tmp`` and an empty home, so the user's ``~/.local``
   and ``PYTHONPATH`` stay out), ``PYTHONNOUSERSITE=1``, and four binds at
   their host paths: the root read-write (the job reads its spec and inputs
   there and puts the arrays of its result in the store), the attempt's
   scratch directory on the node's own disk read-write (its outcome and
   console output), the code environment and the stand-in read-only.
   ``--nv`` is added when the function asks for a GPU.

For Docker, :mod:`hither_fs.docker` pulls the image once per host and runs
the same runner with the same binds and environment (:func:`docker_arguments`).

The in-container runner writes ``outcome.json`` into the scratch directory
itself, like any attempt; the worker commits the outcome as usual. Timeout
and cancel kill the child's process group, and with it ``singularity`` and
everything it started.

spython has sharp edges, handled here: it captures the output of what it
runs (so the runner appends the job's console to the scratch files itself,
and what Apptainer says goes into the job's ``stderr.txt``); it calls
``sys.exit`` for a bind path that is missing on the host; ``environ=``
replaces the whole environment (not used: the child's own environment is
adjusted instead); and a pull returns the image path even when it failed
(the path is checked). Nothing here lets an exception out of
:func:`run_container_attempt`: a job that cannot run fails with a clear
``ContainerError`` and the worker carries on.
"""

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import subprocess
import time
from typing import Any, Dict, Iterator, List, Optional

import filelock
import psutil

from . import codeenv, docker
from .root import Root, now_iso
from .runtime.execute import OUTCOME, error_record
from .errors import ContainerError
from .pull_failures import forget_failure, raise_if_failed_lately, remember_failure
from .runtime.files import (HOST, file_mode, fs_clock, makedirs, read_json, remove_quietly, rename_unless_there,
                            temp_name, write_json)
from .runtime.store import sha1_of_file

log = logging.getLogger("hither_fs.containers")

PULL_SCHEMES = ("docker://", "library://", "oras://", "shub://", "https://")
#: ``HITHER_FS_IMAGE_FORMAT``: pull images as ``sandbox`` directories (the
#: default: they run wherever Apptainer runs, even without a way to mount a
#: SIF file) or as single ``sif`` files (far fewer inodes on a shared
#: filesystem).
IMAGE_FORMATS = ("sandbox", "sif")
#: Host variables that would add mounts or environment to every container.
_LEAKY_ENV = re.compile(r"^(APPTAINERENV_|SINGULARITYENV_|APPTAINER_BIND|SINGULARITY_BIND)")


# -- the container runtime ---------------------------------------------------------

RUNTIMES = ("singularity", "docker")
_FALSE = ("FALSE", "0", "NO", "OFF")


def requested_runtime(config_value: Optional[str] = None) -> Optional[str]:
    """The runtime a submitter asked for: ``hi.Config(container_runtime=...)``, else
    ``HITHER_USE_SINGULARITY`` (the hither docs' switch: true for Singularity, false for
    Docker), else None - the host that runs the job chooses (:func:`choose_runtime`)."""
    if config_value:
        return config_value
    setting = os.environ.get("HITHER_USE_SINGULARITY")
    if setting is None or not setting.strip():
        return None
    return "docker" if setting.strip().upper() in _FALSE else "singularity"


def choose_runtime(requested: Optional[str]) -> str:
    """The runtime that runs a job here: the one requested, else Apptainer/Singularity where
    its ``singularity`` command exists, else Docker where its command exists."""
    if requested in RUNTIMES:
        return requested
    if requested is not None:
        raise ContainerError("unknown container runtime {!r}: use 'singularity' or 'docker'".format(requested))
    if shutil.which("singularity"):  # Apptainer installs it too; spython runs that command
        return "singularity"
    if shutil.which("docker"):
        return "docker"
    raise ContainerError(
        "no container runtime on host {}: neither 'singularity' (Apptainer provides it) nor 'docker' is on PATH; install "
        "Apptainer or Docker, or load its module, on the machines that run container jobs".format(
            os.uname().nodename))


def singularity_executable() -> str:
    """Path of the ``singularity`` command spython runs; a clear error if there is none."""
    exe = shutil.which("singularity")
    if exe is None:
        raise ContainerError(
            "no 'singularity' command on PATH on host {}: install Apptainer (it provides 'singularity') "
            "or SingularityCE, or load its module, on the machines that run container jobs (or run "
            "this job with Docker: hi.Config(container_runtime='docker'))".format(os.uname().nodename))
    return exe


@contextlib.contextmanager
def _scoped_environ(remove: Optional[List[str]] = None, add: Optional[Dict[str, str]] = None) -> Iterator[None]:
    """Change this process's environment for the duration (spython's ``environ=`` would replace all of it)."""
    saved = dict(os.environ)
    try:
        for name in remove or []:
            os.environ.pop(name, None)
        os.environ.update(add or {})
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _spython_client():
    from spython.main import Client
    return Client


@contextlib.contextmanager
def _capture_spython(into: io.StringIO) -> Iterator[None]:
    """Catch what spython prints: its logger keeps the streams it found at import time."""
    from spython.logger import bot
    saved = bot.errorStream, bot.outputStream
    bot.errorStream = bot.outputStream = into
    try:
        with contextlib.redirect_stderr(into), contextlib.redirect_stdout(into):
            yield
    finally:
        bot.errorStream, bot.outputStream = saved


# -- images -------------------------------------------------------------------------------

def is_pulled(image: str) -> bool:
    return image.startswith(PULL_SCHEMES)


def image_format() -> str:
    fmt = os.environ.get("HITHER_FS_IMAGE_FORMAT", "sandbox").strip().lower() or "sandbox"
    if fmt not in IMAGE_FORMATS:
        raise ContainerError("HITHER_FS_IMAGE_FORMAT={!r}: use 'sandbox' or 'sif'".format(fmt))
    return fmt


def image_name(url: str, fmt: str) -> str:
    """The file name an image URL gets in ``ROOT/images/``: readable, and unique by hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1]).strip("._-")[:60]
    return "{}-{}.{}".format(hashlib.sha1(url.encode("utf-8")).hexdigest()[:12], slug, fmt)


def tree_sha1(path: str) -> str:
    """A content hash of a sandbox directory: every path, symlink target and file's bytes."""
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, path)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if os.path.islink(full):
                h.update("L {} {}\n".format(rel, os.readlink(full)).encode("utf-8", "surrogateescape"))
                continue
            try:
                digest = sha1_of_file(full) if os.path.isfile(full) else "special"
            except OSError:
                digest = "unreadable-{}".format(os.lstat(full).st_size)
            h.update("F {} {}\n".format(rel, digest).encode("utf-8", "surrogateescape"))
        for name in dirnames:
            h.update("D {}\n".format(os.path.normpath(os.path.join(rel_dir, name))).encode(
                "utf-8", "surrogateescape"))
    return h.hexdigest()


def _pull(url: str, dest: str, fmt: str) -> None:
    """Pull ``url`` to ``dest`` with spython; raise ContainerError with Apptainer's words if it fails."""
    client = _spython_client()
    said = io.StringIO()
    lines: List[str] = []
    try:
        with _capture_spython(said), _scoped_environ(
                add={"APPTAINER_DISABLE_CACHE": "1", "SINGULARITY_DISABLE_CACHE": "1"}):
            if fmt == "sandbox":
                _, stream = client.build(recipe=url, image=dest, sandbox=True, sudo=False, stream=True,
                                         quiet=True, singularity_options=["--quiet"])
            else:
                _, stream = client.pull(url, name=dest, stream=True, quiet=True,
                                        singularity_options=["--quiet"])
            for line in stream:
                lines.append(line)
    except (subprocess.CalledProcessError, SystemExit, OSError) as exc:
        words = (said.getvalue() + "".join(lines)).strip() or str(exc)
        raise ContainerError("could not pull container image {}: {}".format(url, _telling_words(words))) from None
    if not os.path.exists(dest):  # spython reports a path even when nothing was made
        raise ContainerError("pulling container image {} made no image at {}: {}".format(
            url, dest, _telling_words((said.getvalue() + "".join(lines)).strip()) or "no message"))


def pulled_image(root, url: str) -> Dict[str, Any]:
    """The local copy of a remote image in ``ROOT/images/``, pulled on first use.

    One pull per root however many workers want the image at once: the pull
    happens under a file lock next to the image, into a temporary name, and is
    published by one atomic rename; the others wait for the lock and find it
    there. Where file locks do not reach across nodes (Lustre ``localflock``,
    NFS ``local_lock``), one pull per node may happen instead: each into its
    own temporary name, the first rename wins and the others are dropped -
    never a half image, never another node's pull removed. ``<name>.json`` records the
    URL, the content hash and when and where it was pulled.
    """
    fmt = image_format()
    images = root.layout.images
    makedirs(images)
    name = image_name(url, fmt)
    final = os.path.join(images, name)
    meta_path = final + ".json"
    meta = read_json(meta_path, None, missing_ok=True)
    if meta and os.path.exists(final):
        return _image_facts(meta, pulled=False)
    waited = time.monotonic()
    lock = final + ".lock"
    _replace_odd_lock(lock)
    with filelock.FileLock(lock, mode=file_mode(images), thread_local=False):
        waited = time.monotonic() - waited
        meta = read_json(meta_path, None, missing_ok=True)
        if meta and os.path.exists(final):
            return _image_facts(meta, pulled=False, waited=waited)
        failed_path = final + ".failed.json"
        raise_if_failed_lately(failed_path, url)
        if not os.path.exists(final):
            _remove_dead_pulls(images, name)
            tmp = temp_name(final)
            start = time.monotonic()
            try:
                _pull(url, tmp, fmt)
            except ContainerError as exc:
                _remove(tmp)
                remember_failure(failed_path, url, str(exc))
                raise
            seconds = time.monotonic() - start
            sha1 = _image_sha1(tmp)
            pulled = rename_unless_there(tmp, final)
            if not pulled:
                # published meanwhile by a pull on another node (the lock is only this node's): that
                # one stands, and so does its record, once written
                meta = read_json(meta_path, None, missing_ok=True)
                if meta:
                    return _image_facts(meta, pulled=False, waited=waited)
                sha1 = _image_sha1(final)
        else:  # published by a pull that died before writing its record
            seconds, pulled = None, False
            sha1 = _image_sha1(final)
        meta = {"url": url, "path": final, "format": fmt, "sha1": sha1, "pulled": _now(),
                "host": os.uname().nodename, "pull_seconds": None if seconds is None else round(seconds, 3)}
        write_json(meta_path, meta)
        forget_failure(failed_path)
        return _image_facts(meta, pulled=pulled, waited=waited)


def _image_sha1(path: str) -> str:
    """The content hash of an image: of its file (a SIF), or of its tree (a sandbox)."""
    return tree_sha1(path) if os.path.isdir(path) else sha1_of_file(path)


def _replace_odd_lock(path: str) -> None:
    """A lock file must be a regular file: opening it follows a symbolic link (and could
    truncate the file it points to, outside the root) or blocks on a FIFO. Such an entry
    is removed; the lock makes a new, regular one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise ContainerError("{} is a directory where the image's lock file belongs; remove it".format(path))
    if not stat.S_ISREG(mode):
        log.warning("removing %s: a %s where the image's lock file belongs", path,
                    "symbolic link" if stat.S_ISLNK(mode) else "special file")
        remove_quietly(path)


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else remove_quietly(path)


def _remove_dead_pulls(images: str, name: str) -> None:
    """Remove what pulls of this image that were killed left behind - only theirs: a pull
    by another node may be under way (the file lock does not reach across nodes)."""
    for stale in os.listdir(images):
        if not stale.startswith("." + name + ".tmp-"):
            continue
        path = os.path.join(images, stale)
        host, _, rest = stale[len("." + name + ".tmp-"):].rpartition(".")[0].rpartition(".")
        try:
            pid = int(rest)
        except ValueError:
            continue
        if host == HOST:
            dead = not psutil.pid_exists(pid)
        else:  # another node's pull: its pids mean nothing here; judged by age, on the file system's clock
            try:
                dead = fs_clock(images) - os.lstat(path).st_mtime > 3600
            except FileNotFoundError:
                continue
        if dead:
            _remove(path)


def _image_facts(meta: Dict[str, Any], pulled: bool, waited: float = 0.0) -> Dict[str, Any]:
    facts = {"image_path": meta["path"], "image_sha1": meta["sha1"], "image_pulled": pulled}
    if pulled:
        facts["image_pull_seconds"] = meta.get("pull_seconds")
    elif waited > 0.5:
        facts["image_wait_seconds"] = round(waited, 3)
    return facts


def local_image(root, image: str) -> Dict[str, Any]:
    """Facts about a local ``.sif`` file or sandbox directory, used in place."""
    path = os.path.abspath(os.path.expanduser(image))
    if not os.path.exists(path):
        raise ContainerError("container image {} does not exist on host {} (give a docker://, library:// or "
                             "oras:// URL, a .sif file or a sandbox directory)".format(path, os.uname().nodename))
    facts: Dict[str, Any] = {"image_path": path}
    if os.path.isfile(path):
        facts["image_sha1"] = _cached_file_sha1(root, path)
    else:
        facts["image_kind"] = "sandbox directory"
    return facts


def _cached_file_sha1(root, path: str) -> str:
    """sha1 of an image file, remembered in ``images/hashes/`` while the file is unchanged."""
    st = os.stat(path)
    ident = "{}\0{}\0{}\0{}".format(os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    key = hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()
    cache = os.path.join(root.layout.images, "hashes", key + ".json")
    known = read_json(cache, None, missing_ok=True)
    if known and known.get("sha1"):
        return known["sha1"]
    sha1 = sha1_of_file(path)
    makedirs(os.path.dirname(cache))
    write_json(cache, {"path": path, "size": st.st_size, "sha1": sha1})
    return sha1


def resolve_image(root, image: str) -> Dict[str, Any]:
    return pulled_image(root, image) if is_pulled(image) else local_image(root, image)


# -- running ---------------------------------------------------------------------------

def check_bind_paths(*paths: str) -> None:
    for path in paths:
        if ":" in path or "," in path:
            raise ContainerError("cannot bind {} into a container: ':' and ',' are not allowed in "
                                 "bind paths".format(path))


def runner_environment(job_id: str, code_dir: str, lib_dir: str) -> Dict[str, str]:
    """The environment of the in-container runner (nothing else of the host's reaches it)."""
    env = {"PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "HITHER_FS_JOB_ID": job_id,
           "PYTHONPATH": "{}:{}".format(lib_dir, code_dir)}
    if os.environ.get("HITHER_FS_FSYNC"):
        env["HITHER_FS_FSYNC"] = os.environ["HITHER_FS_FSYNC"]
    return env


def runner_command(root_path: str, job_id: str, out_dir: str, code_dir: str) -> List[str]:
    """The in-container runner's command line (``out_dir``: the attempt's scratch directory)."""
    return ["python3", "-m", "hither_fs.runtime.execute", "--code", code_dir, "--console", out_dir,
            "--out", out_dir, root_path, job_id]


def exec_arguments(root_path: str, job_id: str, out_dir: str, image_path: str, code_dir: str,
                   lib_dir: str, gpu: bool = False) -> Dict[str, Any]:
    """The keyword arguments of spython's ``Client.execute`` for one attempt."""
    check_bind_paths(root_path, out_dir, code_dir, lib_dir)
    options = ["--containall", "--cleanenv"]
    for key, value in sorted(runner_environment(job_id, code_dir, lib_dir).items()):
        options += ["--env", "{}={}".format(key, value)]
    options += ["--pwd", out_dir]
    return {"image": image_path, "command": runner_command(root_path, job_id, out_dir, code_dir),
            "bind": ["{0}:{0}".format(root_path), "{0}:{0}".format(out_dir), "{0}:{0}:ro".format(code_dir),
                     "{0}:{0}:ro".format(lib_dir)],
            "options": options, "nv": bool(gpu)}


def docker_arguments(root_path: str, job_id: str, out_dir: str, ref: str, code_dir: str, lib_dir: str,
                     spec: Dict[str, Any]) -> List[str]:
    """The ``docker run`` arguments of one attempt: the same runner, binds and environment as
    for Apptainer, as the submitting user, with the job's resources as limits."""
    check_bind_paths(root_path, out_dir, code_dir, lib_dir)
    resources = spec.get("resources") or {}
    binds = [{"path": root_path}, {"path": out_dir}, {"path": code_dir, "readonly": True},
             {"path": lib_dir, "readonly": True}]
    return docker.run_arguments(ref, runner_command(root_path, job_id, out_dir, code_dir),
                                runner_environment(job_id, code_dir, lib_dir), out_dir, binds,
                                cpus=resources.get("cpus"), memory_gb=resources.get("memory_gb"),
                                gpus=resources.get("gpus") or ("all" if spec.get("gpu") else None),
                                network=bool(spec.get("container_network")),
                                labels={"hither_fs.job": job_id, "hither_fs.host": HOST})


def command_line(args: Dict[str, Any]) -> List[str]:
    """The ``singularity exec`` command spython runs for ``args`` (recorded for a person to re-run)."""
    cmd = ["singularity", "exec"] + (["--nv"] if args["nv"] else [])
    for bind in args["bind"]:
        cmd += ["--bind", bind]
    return cmd + args["options"] + [args["image"]] + args["command"]


def wants_gpu(spec: Dict[str, Any]) -> bool:
    return bool(spec.get("gpu")) or bool((spec.get("resources") or {}).get("gpus"))


def _execute(args: Dict[str, Any]) -> Dict[str, Any]:
    client = _spython_client()
    leaky = [k for k in os.environ if _LEAKY_ENV.match(k)]
    said = io.StringIO()
    try:
        with _capture_spython(said), _scoped_environ(remove=leaky):
            result = client.execute(return_result=True, quiet=True, **args)
    except SystemExit:
        raise ContainerError("spython refused to run the container: {}".format(
            said.getvalue().strip() or "no message")) from None
    if not isinstance(result, dict):
        raise ContainerError("spython returned {!r} instead of a result".format(result))
    return result


def _text(message: Any) -> str:
    if isinstance(message, list):
        return "".join(m if m.endswith("\n") else m + "\n" for m in message if m)
    return message or ""


def _telling_words(text: str, limit: int = 2000) -> str:
    """What the container runtime said, its FATAL and ERROR lines first (a job's one-line summary
    shows the cause, not a WARNING about the cache), at most ``limit`` characters of them."""
    lines = text.splitlines()
    telling = [ln for ln in lines if "FATAL" in ln or "ERROR" in ln or "Error" in ln]
    text = "\n".join(telling + [ln for ln in lines if ln not in telling]) if telling else text
    return text if len(text) <= limit else text[:limit] + "..."


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    finally:
        os.close(fd)


def run_container_attempt(root_path: str, job_id: str, spec: Dict[str, Any], out_dir: str) -> bool:
    """Run one attempt of a containerized job; return True if it produced a result.

    Never raises (except ``KeyboardInterrupt``): whatever goes wrong becomes
    the attempt's error outcome. Facts about the runtime, the image and the
    command go to ``runtime.json`` in ``out_dir`` (the attempt's scratch
    directory) and from there into the job's runtime facts.
    """
    adir = out_dir
    facts: Dict[str, Any] = {"image": spec.get("container")}
    stage = "starting the container"
    try:
        root = Root.get(root_path)
        makedirs(adir)
        stage = "choosing the container runtime"
        runtime = facts["container_runtime"] = choose_runtime(spec.get("container_runtime"))
        stage = "getting the container image"
        if runtime == "docker":
            facts["container_runner"] = "docker"
            facts["docker"] = docker.docker_executable()
            facts.update(docker.ensure_image(root, spec["container"]))
        else:
            facts["container_runner"] = "singularity (spython)"
            facts["singularity"] = singularity_executable()
            facts.update(resolve_image(root, spec["container"]))
        stage = "unpacking the code environment"
        if not spec.get("code"):
            raise ContainerError("the job spec has no code environment (it was submitted by a hither_fs "
                                 "that could not capture one)")
        code_dir = codeenv.materialize(root, spec["code"]["manifest"])
        lib_dir = codeenv.materialize_runtime(root)
        stage = "running the container"
        start = time.monotonic()
        if runtime == "docker":
            args = docker_arguments(root.path, job_id, adir, facts["image_ref"], code_dir, lib_dir, spec)
            facts["container_command"] = ["docker"] + args
            write_json(os.path.join(adir, "runtime.json"), facts)
            return_code, said = docker.run(args, adir)
        else:
            exec_args = exec_arguments(root.path, job_id, adir, facts["image_path"], code_dir, lib_dir,
                                       gpu=wants_gpu(spec))
            facts["container_command"] = command_line(exec_args)
            write_json(os.path.join(adir, "runtime.json"), facts)
            result = _execute(exec_args)
            return_code = result.get("return_code")
            said = _text(result.get("message")).strip()
        facts["container_seconds"] = round(time.monotonic() - start, 3)
        facts["container_exit_code"] = return_code
        if said:
            tag = "[{}] ".format(runtime)
            _append(os.path.join(adir, "stderr.txt"), tag + said.replace("\n", "\n" + tag) + "\n")
        write_json(os.path.join(adir, "runtime.json"), facts)
        outcome = read_json(os.path.join(adir, OUTCOME), None, missing_ok=True)
        if isinstance(outcome, dict) and ("result" in outcome or "error" in outcome):
            return "result" in outcome
        hint = ""
        if "python3" in said and ("not found" in said or "no such file" in said.lower()):
            hint = " (the image needs python3 and numpy)"
        elif "numpy" in said:
            hint = " (the image needs numpy)"
        raise ContainerError("the container exited with code {} before the job's code could report{}: {}".format(
            return_code, hint, _telling_words(said) or "no message"))
    except (Exception, SystemExit) as exc:
        record = error_record(exc, stage)
        if isinstance(exc, ContainerError):
            record.update(type="ContainerError", module="hither_fs", traceback="")
        try:
            makedirs(adir)
            write_json(os.path.join(adir, "runtime.json"), facts)
            write_json(os.path.join(adir, OUTCOME), {"error": record})
            _append(os.path.join(adir, "stderr.txt"), "{}: {}\n".format(record["type"], record["message"]))
        except Exception:
            pass
        return False


def _now() -> str:
    return now_iso()
