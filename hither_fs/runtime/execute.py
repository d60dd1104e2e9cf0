"""Run one attempt of one job: the code that executes where the job runs.

An attempt finds the function of a job's spec, decodes the arguments
(reading upstream results for pipeline inputs), calls the function and writes
its outcome - ``{"result": {"value": ...}}`` or ``{"error": {...}}`` - to
``outcome.json`` in the attempt's scratch directory, on the node's own disk.
It never touches the job's records in the root: the worker that launched the
attempt commits the outcome (:func:`hither_fs.protocol.commit`), so a late or
duplicate attempt can never overwrite a recorded result. Arrays and files of
the result go to the root's content-addressed store, where writing the same
bytes twice is harmless.

Console capture is the launcher's business (file descriptors redirected to
``stdout.txt`` and ``stderr.txt`` in the scratch directory), so output of C
code and child processes is captured too.

Standard library and numpy only, Python 3.8+: this module also runs inside
job containers, as ``python3 -m hither_fs.runtime.execute --out DIR ROOT JOB_ID``
with ``--code DIR`` (the job's unpacked code environment, where the function
is imported from) and ``--console DIR`` (append stdout and stderr to the
scratch files: the container runner on the host cannot hand its own file
descriptors through spython, which captures the output of what it runs).
"""

import os
import sys
import traceback
from typing import Any, Callable, Dict, Optional

from .code import function_in_code_env, import_function
from .files import CorruptFileError, file_mode, read_json, write_json
from .layout import Layout
from .serialization import decode, encode, files_stored_in
from .store import Store


def error_record(exc: BaseException, stage: str, tb: Optional[str] = None) -> Dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "stage": stage,
        "traceback": tb if tb is not None else "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


OUTCOME = "outcome.json"


def upstream_value(layout: Layout, store: Store, job_id: str) -> Any:
    """The result of a finished job, decoded (its ``state.json`` holds it)."""
    path = layout.state_file(job_id)
    state = read_json(path)
    if not isinstance(state, dict) or state.get("status") != "finished" or "result" not in state:
        raise CorruptFileError(path, "job {} has no result (status {!r})".format(
            job_id, state.get("status") if isinstance(state, dict) else None))
    return decode(state["result"]["value"], store)


def run_attempt(root: str, job_id: str, out_dir: str, spec: Optional[Dict[str, Any]] = None,
                function: Optional[Callable] = None, code_dir: Optional[str] = None) -> bool:
    """Run the job once; return True if the function returned a value.

    ``out_dir`` receives ``outcome.json``. ``spec`` is the job's spec if the
    caller has read it already. ``function`` skips the import when the caller
    already holds the callable (a job run inside the submitting process).
    ``code_dir`` is given inside a container: the function is imported from
    the job's code environment. (On the host, callers send containerized jobs
    to :mod:`hither_fs.containers` instead, which runs this inside the container.)
    """
    outcome = attempt_outcome(root, job_id, spec, function, code_dir)
    write_json(os.path.join(out_dir, OUTCOME), outcome)
    return "result" in outcome


def attempt_outcome(root: str, job_id: str, spec: Optional[Dict[str, Any]] = None,
                    function: Optional[Callable] = None, code_dir: Optional[str] = None) -> Dict[str, Any]:
    """Run the job once; return its outcome, ``{"result": {"value": ...}}`` or
    ``{"error": {...}}`` (see :func:`run_attempt`, which writes it to a file)."""
    layout = Layout(root)
    store = Store(layout.store)
    stage = "reading the job spec"
    try:
        if spec is None:
            spec = read_json(layout.spec_file(job_id))
        fspec = spec["function"]
        if code_dir is not None:
            fspec = function_in_code_env(fspec, spec["code"], code_dir)
            function = None
        if function is None:
            stage = "importing function {!r}".format(fspec["name"])
            function, version = import_function(fspec, store)
            if version is not None and version != fspec["version"]:
                raise RuntimeError(
                    "function {!r} is version {} in the code now, but the job was submitted "
                    "for version {}".format(fspec["name"], version, fspec["version"]))
        stage = "loading the arguments"
        kwargs = decode(spec["args"], store, lambda uid: upstream_value(layout, store, uid))
        stage = "running {}".format(fspec["name"])
        cwd = spec.get("cwd")
        if cwd and spec.get("chdir") and os.path.isdir(cwd):
            os.chdir(cwd)
        with files_stored_in(store):  # a hi.File it makes keeps its bytes in this root at once
            value = function(**kwargs)
        stage = "storing the result"
        encoded = encode(value, store, "result of {}".format(fspec["name"]), result=True)
        return {"result": {"value": encoded}}
    except BaseException as exc:  # the job's error is data, whatever it is
        record = error_record(exc, stage)
        if stage.startswith("running"):
            # drop the runner's own frames: the user wants their function's traceback
            frames = traceback.extract_tb(exc.__traceback__)[1:]
            record["traceback"] = "Traceback (most recent call last):\n" + "".join(
                traceback.format_list(frames)) + "".join(traceback.format_exception_only(type(exc), exc))
        sys.stderr.write(record["traceback"])
        return {"error": record}
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass


def redirect_console(directory: str, truncate: bool = False) -> None:
    """Send this process's stdout and stderr to ``directory``'s console files.

    The files are opened for appending, so a job process and the container
    it starts can both write to them without overwriting each other.
    """
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
    for fd, name in ((1, "stdout.txt"), (2, "stderr.txt")):
        out = os.open(os.path.join(directory, name), flags, 0o600)
        os.fchmod(out, file_mode(directory))
        os.dup2(out, fd)
        os.close(out)
    try:
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):  # not a text stream; closed
        pass


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options = {}
    while len(args) > 1 and args[0] in ("--code", "--console", "--out"):
        options[args[0][2:]] = args[1]
        del args[:2]
    if len(args) != 2 or "out" not in options:
        sys.stderr.write("usage: python -m hither_fs.runtime.execute --out DIR [--code DIR] [--console DIR] "
                         "ROOT JOB_ID\n")
        return 2
    if "console" in options:
        redirect_console(options["console"])
    ok = run_attempt(args[0], args[1], options["out"], code_dir=options.get("code"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
