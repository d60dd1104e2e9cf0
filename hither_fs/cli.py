"""The ``hither-fs`` command: run workers and look at a root.

Each command imports what it needs when it runs (the worker, Slurm, the store,
gc...), so that a quick look - ``hither-fs ls`` - does not pay for the rest.
"""

import argparse
import contextlib
import json
import os
import sys
from typing import Any, List, Optional, Set

from . import listing, protocol
from .protocol import FINAL_VALUES, Status
from .root import Root, RootError
from .runtime.files import CorruptFileError


def _duration(seconds: Any) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return "{:.1f}s".format(seconds)
    if seconds < 3600:
        return "{:.1f}m".format(seconds / 60)
    return "{:.1f}h".format(seconds / 3600)


def _printable(text: str) -> str:
    """``text`` without control characters (a terminal's escape sequences from a job's error or label)."""
    return "".join(c if c.isprintable() else "?" for c in text.replace("\n", " "))


def _selected(root: Root, args, live_only: bool = False) -> listing.Selection:
    """The jobs ``ls``/``cancel`` name with --run, --label, --function, --status, --since. Only
    live statuses asked for (or ``live_only``): from the live work's indexes, the ended jobs'
    records not read; otherwise the ended jobs from the shards' summaries (hither_fs.summary)."""
    newer = None
    if getattr(args, "since", None):
        from .gc import parse_age
        newer = parse_age(args.since)
    live_only = live_only or bool(args.status) and set(args.status) <= set(listing.LIVE)
    from .summary import listing as summed
    run = args.run
    if live_only:
        jobs = listing.Listing.of_rows(listing.live_rows(root))
        if run:  # a prefix names one run among them all, ended ones too, as for ls: never another live one
            run = listing.resolve_run(_all_runs(root, jobs), run)
            if run not in jobs.runs():
                return listing.Listing([]).select()  # the run has no live job
    else:
        jobs = summed(root)
    return jobs.select(run=run, label=args.label, function=args.function, status=args.status,
                       newer_than=newer)


def _all_runs(root: Root, live: Optional[listing.Listing] = None) -> Set[str]:
    """Every run of the root: of its live jobs (``live``, if listed already) and of its ended ones."""
    from .summary import listing as summed
    live = live or listing.Listing.of_rows(listing.live_rows(root))
    return live.runs() | summed(root, save=False).runs()


def cmd_ls(args) -> int:
    root = Root.get(args.root, create=False)
    selection = _selected(root, args)
    if args.by:
        return _ls_groups(selection, args.by, args.json)
    total = len(selection)
    shown = selection.newest(args.limit) if args.limit else selection.rows()
    hidden = total - len(shown)
    waits: Any = None
    if any(r["status"] == Status.QUEUED for r in shown):
        from .slurm import QueueWaits  # (Slurm's machinery: only to say why queued jobs wait)
        waits = QueueWaits(root)
    for r in shown:
        r["waiting"] = waits.reason(r["queue"]) if r["status"] == Status.QUEUED else ""
    if args.json:
        print(json.dumps(shown, indent=1))
        return 0
    print("{:16}  {:9}  {:20}  {:27}  {:>7}  {}".format("ID", "STATUS", "FUNCTION", "SUBMITTED", "TOOK",
                                                        "LABEL / ERROR OR WHY IT WAITS"))
    for r in shown:
        note = r["error"] or r["waiting"]
        if r["label"]:
            note = "[{}] {}".format(r["label"], note) if note else "[{}]".format(r["label"])
        note = _printable(note)
        print("{id:16}  {status:9}  {function:20.20}  {submitted:27}  {took:>7}  {note}".format(
            took=_duration(r["seconds"]), note=note if len(note) <= 100 else note[:99] + "…",
            **{k: _printable(str(r[k])) for k in ("id", "status", "function", "submitted")}))
    if hidden:
        print("... and {} older jobs (--limit 0 shows all)".format(hidden))
    print("{} job{}{}".format(total, "" if total == 1 else "s",
                              ": " + listing.counts_text(selection.counts()) if total else ""))
    return 0


def _ls_groups(selection: listing.Selection, by: str, as_json: bool) -> int:
    """``ls --by run|label|function``: one line per group, with its counts and times."""
    out = selection.groups(by)
    if as_json:
        print(json.dumps(out, indent=1))
        return 0
    print("{:40}  {:27}  {:>5}  {:>8}  {:>8}  {}".format(by.upper(), "FIRST SUBMITTED", "JOBS", "SPAN", "JOB TIME",
                                                         "STATUS" + ("  LABEL" if by == "run" else "")))
    for g in out:
        print("{:40.40}  {:27}  {:>5}  {:>8}  {:>8}  {}{}".format(
            _printable(g[by]), _printable(g["first_submitted"]), g["jobs"], _duration(g["span_seconds"]),
            _duration(g["run_seconds"]), _printable(g["counts"]),
            "  " + _printable(", ".join(g["labels"])) if by == "run" and g["labels"] else ""))
    return 0


def _resolve_job(root: Root, job_id: str) -> str:
    return listing.resolve_job(root, job_id)


def cmd_show(args) -> int:
    from .slurm import QueueWaits
    root = Root.get(args.root, create=False)
    job_id = _resolve_job(root, args.job_id)
    state = protocol.live_status(root, job_id, protocol.read_state(root, job_id))
    spec = protocol.read_spec(root, job_id)
    out = {"directory": root.layout.job_dir(job_id), "label": listing.label_of(root, job_id, spec) or None,
           "spec": spec, "state": state}
    if state.get("status") == Status.QUEUED:
        out["waiting"] = QueueWaits(root).reason(state.get("queue"))
    tokens = protocol.find_tokens(root, {job_id})
    if job_id in tokens:
        out["token"] = tokens[job_id].path
    print(json.dumps(out, indent=1, sort_keys=False))
    return 0


def cmd_logs(args) -> int:
    from .job import Job
    root = Root.get(args.root, create=False)
    job: Job[Any] = Job(_resolve_job(root, args.job_id), root)
    console = job.get_console_output()
    streams = ["stderr"] if args.stderr else ["stdout"] if args.stdout else ["stdout", "stderr"]
    for name in streams:
        sys.stdout.write(console[name])
    return 0


#: ``cancel`` asks before cancelling more jobs than this (``--yes`` does not ask).
CONFIRM_ABOVE = 5


def cmd_cancel(args) -> int:
    root = Root.get(args.root, create=False)
    ids = list(dict.fromkeys(_resolve_job(root, j) for j in args.job_ids))  # each once, in order
    filters = args.run or args.label or args.function or args.status or args.since or args.all
    if ids and filters:
        raise ValueError("name jobs either by id or by --run, --label, --function, --status, --since or --all, "
                         "not both")
    if filters:
        if args.status and set(args.status) - set(listing.LIVE):
            raise ValueError("only {} jobs can be cancelled".format(", ".join(listing.LIVE)))
        ids = [r["id"] for r in _selected(root, args, live_only=True).rows()]
        if not ids:
            print("no unfinished job matches")
            return 0
    elif not ids:
        raise ValueError("name jobs to cancel: ids (or unique prefixes), or --run, --label, --function, --status, "
                         "--since or --all")
    if len(ids) > CONFIRM_ABOVE and not args.yes:
        if not sys.stdin.isatty():
            raise ValueError("{} jobs match; add --yes to cancel them".format(len(ids)))
        sys.stderr.write("cancel {} jobs in {}? [y/N] ".format(len(ids), root.path))
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing cancelled")
            return 1
    found = protocol.find_tokens(root, set(ids))
    said = {"cancelled": 0, "running": 0, "ended": 0, "held": 0, "failed": 0}
    for job_id in ids:
        try:
            status = protocol.cancel(root, job_id, found.get(job_id))
        except (OSError, CorruptFileError, ValueError) as exc:  # removed by gc meanwhile, damaged...
            said["failed"] += 1
            print("{}: not cancelled: {}".format(job_id, _printable(str(exc))))
            continue
        kind = ("running" if status == Status.RUNNING else "cancelled" if status == Status.CANCELLED
                else "ended" if status in (Status.FINISHED, Status.ERROR) else "held")
        said[kind] += 1
        if len(ids) > CONFIRM_ABOVE:
            continue
        if kind == "running":
            print("{}: cancel requested; its worker kills it".format(job_id))
        elif kind == "cancelled":
            print("{}: cancelled".format(job_id))
        elif kind == "ended":
            print("{}: already {}".format(job_id, status))
        else:
            print("{}: not cancelled: another process holds it just now (it is {}); try again".format(job_id, status))
    if len(ids) > CONFIRM_ABOVE:
        print("{} jobs: {cancelled} cancelled, {running} running (their workers kill them), {ended} already "
              "finished, {held} held by another process (try again){more}".format(
                  len(ids), more=", {} could not be cancelled".format(said["failed"]) if said["failed"] else "",
                  **said))
    return 1 if said["ended"] or said["held"] or said["failed"] else 0


def cmd_worker(args) -> int:
    import logging

    from . import environment
    from .slurm import parse_slurm_time
    from .worker import Worker
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    environment.adopt()  # the submitter's sys.path and PYTHONPATH, for the jobs
    root = Root.get(args.root)
    time_limit = parse_slurm_time(args.time_limit) if args.time_limit else None
    try:  # an allocation's shape, from SlurmJobHandler: shown by hither-fs workers ls
        shape = json.loads(os.environ.pop("HITHER_FS_SHAPE", "null"))
    except ValueError:
        shape = None
    worker = Worker(root, args.queue or ["local"], slots=args.slots, cpus=args.cpus, memory_gb=args.memory_gb,
                    shape=shape if isinstance(shape, dict) else None,
                    idle_timeout=args.idle_timeout, lease=args.lease, heartbeat=args.heartbeat,
                    parent_pid=args.parent_pid, max_jobs=args.max_jobs, time_limit=time_limit,
                    drain_margin=args.drain_margin)
    try:
        return worker.run()
    except PermissionError as exc:
        print("hither-fs worker: {}".format(exc), file=sys.stderr)
        return 2


def cmd_workers_ls(args) -> int:
    from .slurm import describe_shape, live_workers
    root = Root.get(args.root, create=False)
    rows = sorted(live_workers(root, max_age=float("inf")), key=lambda hb: hb.get("started", ""))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("{:32}  {:10}  {:9}  {:19}  {:5}  {:8}  {:>9}  {:24}  {}".format(
        "WORKER", "HOST", "SLURM JOB", "QUEUES", "SLOTS", "STATE", "LAST BEAT", "SHAPE", "JOBS"))
    for hb in rows:
        print("{:32}  {:10.10}  {:9}  {:19.19}  {:5}  {:8}  {:>8.0f}s  {:24}  {}".format(
            hb.get("id", "?"), hb.get("host", "?"), str(hb.get("slurm_job_id") or "-"),
            ",".join(hb.get("queues", [])), str(hb.get("slots", "")), hb.get("state", "?"),
            hb["age_seconds"], describe_shape(hb.get("shape")), " ".join(hb.get("jobs", [])) or "-"))
    return 0


def cmd_workers_stop(args) -> int:
    from .runtime.files import with_parents, write_new
    from .slurm import live_workers
    root = Root.get(args.root, create=False)
    chosen = [hb for hb in live_workers(root, max_age=float("inf"))
              if args.all or hb.get("id") in args.worker_ids or set(args.queue or []) & set(hb.get("queues", []))]
    if not chosen:
        print("no such workers", file=sys.stderr)
        return 1
    for hb in chosen:
        path = root.layout.stop_request(hb["id"])
        try:
            with_parents(lambda: write_new(path), os.path.dirname(path))
        except FileExistsError:
            pass
        print("{}: asked to stop after its running jobs".format(hb["id"]))
    return 0


def cmd_workers_submit(args) -> int:
    from .slurm import Allocation
    root = Root.get(args.root)
    alloc = Allocation(partition=args.partition, time_limit=args.time, slots=args.slots,
                       cpus_per_slot=args.cpus_per_slot, memory_gb_per_slot=args.memory_gb_per_slot,
                       idle_timeout=args.idle_timeout, sbatch_args=args.sbatch_arg or [], lease=args.lease,
                       account=args.account, qos=args.qos, constraint=args.constraint, gres=args.gres)
    for _ in range(args.count):
        print("submitted allocation {} for queue {}".format(alloc.submit(root, args.queue), args.queue))
    return 0


def cmd_fsck(args) -> int:
    from .fsck import fsck
    root = Root.get(args.root, create=False)
    findings = fsck(root, repair=args.repair)
    for f in findings:
        tag = "DAMAGED" if f.damage else "repaired" if f.repaired else "stale"
        print("{:8}  {}: {}".format(tag, f.path, f.problem))
    damaged = sum(f.damage for f in findings)
    repaired = sum(f.repaired for f in findings)
    print("{}: {} damaged, {} stale ({} repaired)".format(root.path, damaged, len(findings) - damaged, repaired))
    left = len(findings) - repaired
    if left and args.repair:
        print("left as they are: {} (damaged data is only reported: nothing is guessed; stale entries "
              "are repaired once no live process can still be using them)".format(left))
    return 1 if damaged else 0


def cmd_du(args) -> int:
    from .usage import SHARED_NOTE, disk_usage, human
    root = Root.get(args.root, create=False)
    usage = disk_usage(root)
    if args.json:
        print(json.dumps(usage.to_json(), indent=1))
    elif args.by == "area":
        line = "{:10}  {:>10}  {:>10}  {:>9}"
        print(line.format("AREA", "BYTES", "DISK", "INODES"))
        for name, c in list(usage.areas.items()) + [("total", usage.total)]:
            print(line.format(name, human(c.bytes), human(c.disk), c.inodes))
    else:
        line = "{:20}  {:>6}  {:>10}  {:>10}  {:>9}  {:>6}  {:>10}  {:>10}"
        print(line.format(args.by.upper(), "JOBS", "BYTES", "DISK", "INODES", "BLOBS", "BLOB BYTES", "BLOB DISK"))
        for name, g in list(getattr(usage, "by_" + args.by).items()) + [("all jobs", usage.all_jobs)]:
            print(line.format(name, g.jobs, human(g.bytes), human(g.disk), g.inodes, g.blobs, human(g.blob_bytes),
                              human(g.blob_disk)))
        t = usage.total
        print("root total: {} ({} on disk), {} inodes".format(human(t.bytes), human(t.disk), t.inodes))
        print("BYTES, DISK, INODES: the jobs' directories; BLOBS: the store blobs their arguments and results "
              "refer to ({}; \"all jobs\" counts it once)".format(SHARED_NOTE))
    for path in usage.unreadable:
        print("hither-fs du: cannot list {}: what it holds is not counted".format(path), file=sys.stderr)
    return 1 if usage.unreadable else 0


def cmd_gc(args) -> int:
    from . import gc
    from .usage import human
    root = Root.get(args.root, create=False)
    sel = gc.Selection(
        older_than=None if args.older_than is None else gc.parse_age(args.older_than),
        functions=set(args.function or ()), labels=set(args.label or ()),
        runs={listing.resolve_run(_all_runs(root), run) for run in args.run} if args.run else None,
        statuses=set(args.status or ()), max_bytes=None if args.max_bytes is None else gc.parse_size(args.max_bytes),
        max_inodes=args.max_inodes, cache=args.cache, grace=gc.parse_age(args.grace))
    plan = gc.collect(root, sel, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "jobs": plan.jobs, "cache_entries": plan.cache_entries,
                          "blobs": plan.blobs, "freed": vars(plan.freed), "before": vars(plan.total),
                          "kept": plan.kept, "notes": plan.notes}, indent=1))
        return 0
    if args.list:
        for job_id in plan.jobs:
            print("job   {}".format(job_id))
        for key in plan.cache_entries:
            print("cache {}".format(key))
        for key in plan.blobs:
            print("blob  {}".format(key))
    print("{} {} jobs, {} cache entries and {} blobs: {} and {} inodes of {} and {} inodes".format(
        "would remove" if args.dry_run else "removed", len(plan.jobs), len(plan.cache_entries), len(plan.blobs),
        human(plan.freed.bytes), plan.freed.inodes, human(plan.total.bytes), plan.total.inodes))
    for why, n in sorted(plan.kept.items()):
        print("kept: {} ({})".format(why, n))
    for note in plan.notes:
        print("note: {}".format(note))
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    root = Root.get(args.root, create=False)
    where = os.path.dirname(os.path.abspath(args.html))
    if not os.path.isdir(where):
        raise ValueError("cannot write {}: there is no directory {}".format(args.html, where))
    run, n = write_report(root, args.html, run=args.run)
    print("wrote {} ({} jobs of run {})".format(args.html, n, run))
    return 0


def _job_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="jobs of this run (a unique prefix of its id, or its process id; ls --by run "
                                 "lists them)")
    p.add_argument("--label", help="jobs with this label (hi.Config(label=...) or job.set_label())")
    p.add_argument("--function", help="jobs of this function")
    p.add_argument("--status", action="append", choices=[s.value for s in Status] + ["damaged"],
                   help="jobs with this status (repeatable)")
    p.add_argument("--since", metavar="AGE", help="jobs submitted less than AGE ago (30m, 12h, 2d)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hither-fs", description=__doc__)
    parser.add_argument("--root", help="root directory (default: $HITHER_FS_ROOT or ~/.hither_fs)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run a worker daemon that serves queues of the root")
    p.add_argument("--root", default=argparse.SUPPRESS)
    p.add_argument("--queue", action="append", help="queue to serve (repeatable; default: local)")
    p.add_argument("--slots", type=int, default=1, help="jobs run at once (default 1)")
    p.add_argument("--cpus", type=float, default=None, help="CPUs the jobs may use in all (default: no limit)")
    p.add_argument("--memory-gb", type=float, default=None, help="memory the jobs may use in all")
    p.add_argument("--idle-timeout", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument("--time-limit", default=None,
                   help="the allocation's time limit (Slurm format, e.g. 1:00:00); jobs are handed back "
                        "--drain-margin seconds before it")
    p.add_argument("--drain-margin", type=float, default=20.0, help="default 20")
    p.add_argument("--lease", type=float, default=30.0,
                   help="seconds without a heartbeat before another worker's jobs are taken back")
    p.add_argument("--heartbeat", type=float, default=None,
                   help="seconds between heartbeats while running jobs (default: lease/5, at most 2)")
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-jobs", type=int, default=None, help="exit after running this many jobs")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("ls", help="list jobs (or, with --by, runs, labels or functions), with counts per status")
    p.add_argument("--root", default=argparse.SUPPRESS)
    _job_filters(p)
    p.add_argument("--by", choices=["run", "label", "function"], help="one line per run, label or function")
    p.add_argument("--limit", type=int, default=50, help="show the newest N (default 50; 0: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="show everything about a job")
    p.add_argument("--root", default=argparse.SUPPRESS)
    p.add_argument("job_id")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("logs", help="print a job's console output")
    p.add_argument("--root", default=argparse.SUPPRESS)
    p.add_argument("job_id")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--stdout", action="store_true")
    g.add_argument("--stderr", action="store_true")
    p.set_defaults(func=cmd_logs)

    workers = sub.add_parser("workers", help="worker daemons: list, stop, submit Slurm allocations")
    wsub = workers.add_subparsers(dest="workers_command", required=True)
    p = wsub.add_parser("ls", help="list workers from their heartbeats")
    p.add_argument("--root", default=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_workers_ls)
    p = wsub.add_parser("stop", help="ask workers to finish their running jobs and exit")
    p.add_argument("--root", default=argparse.SUPPRESS)
    p.add_argument("worker_ids", nargs="*")
    p.add_argument("--queue", action="append", help="stop the workers serving this queue")
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=cmd_workers_stop)
    p = wsub.add_parser("submit", help="submit worker allocations with sbatch")
    p.add_argument("--root", default=argparse.SUPPRESS)
    p.add_argument("--queue", default="slurm",
                   help="queue to serve (default: slurm, as hi.SlurmJobHandler(queue_name='slurm'))")
    p.add_argument("--count", type=int, default=1, help="number of allocations")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--gres")
    p.add_argument("--time", default="01:00:00", help="time limit (default 01:00:00)")
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--cpus-per-slot", type=int, default=1)
    p.add_argument("--memory-gb-per-slot", type=float, default=2.0)
    p.add_argument("--idle-timeout", type=float, default=120.0)
    p.add_argument("--sbatch-arg", action="append", help="extra sbatch argument (repeatable)")
    p.add_argument("--lease", type=float, default=30.0,
                   help="seconds without a heartbeat before a worker's jobs are taken back (default 30)")
    p.set_defaults(func=cmd_workers_submit)

    p = sub.add_parser("fsck", help="check the whole root; report damaged files")
    p.add_argument("--root", default=argparse.SUPPRESS)
    p.add_argument("--repair", action="store_true",
                   help="put back what a crash left behind: tokens of jobs that lost theirs, stale tickets, "
                        "temp files of dead writers (damaged data is only reported)")
    p.set_defaults(func=cmd_fsck)

    p = sub.add_parser("du", help="bytes and inodes of the root: by area, or the jobs' by function, status or age")
    p.add_argument("--root", default=argparse.SUPPRESS)
    p.add_argument("--by", choices=["area", "function", "status", "age"], default="area",
                   help="what to sum by (default: area, the root's top-level directories)")
    p.add_argument("--json", action="store_true", help="every view, exact numbers")
    p.set_defaults(func=cmd_du)

    p = sub.add_parser("gc", help="remove old finished jobs, then the blobs nothing refers to any more",
                       description="Remove final jobs (finished, error, cancelled) by age, by what they are, or "
                                   "oldest first to fit a budget; then sweep store blobs that no job or cache entry "
                                   "left refers to. Live jobs, the jobs they wait for, cache entries (unless "
                                   "--cache) and anything younger than --grace always stay. Safe while workers and "
                                   "submitters run.")
    p.add_argument("--root", default=argparse.SUPPRESS)
    p.add_argument("--older-than", metavar="AGE", help="jobs that ended longer ago than this (30d, 12h, 90m, 2w)")
    p.add_argument("--function", action="append", help="jobs of this function (repeatable)")
    p.add_argument("--run", action="append", help="jobs of this run: a unique prefix of its id, or its process id "
                   "(repeatable; see hither-fs show)")
    p.add_argument("--label", action="append", help="jobs with this label (hi.Config(label=...); repeatable)")
    p.add_argument("--status", action="append", choices=sorted(FINAL_VALUES), help="jobs with this final status")
    p.add_argument("--max-bytes", metavar="SIZE", help="remove the oldest matching jobs until the root takes "
                                                       "at most this much disk space (500M, 10G)")
    p.add_argument("--max-inodes", type=int, metavar="N", help="... until the root has at most N files and "
                                                                  "directories")
    p.add_argument("--cache", action="store_true", help="also remove the root's cache entries of the --function "
                                                        "and --older-than given (default: cache entries stay)")
    p.add_argument("--grace", default="1h", metavar="AGE",
                   help="nothing younger than this is removed (default 1h, at least 10m; by the file "
                        "system's clock)")
    p.add_argument("--dry-run", action="store_true", help="say what would go and what it frees; remove nothing")
    p.add_argument("--list", action="store_true", help="name every job, cache entry and blob removed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("cancel", help="cancel jobs (running ones are killed): by id or unique prefix, or all "
                                      "unfinished jobs that match the filters")
    p.add_argument("--root", default=argparse.SUPPRESS)
    p.add_argument("job_ids", nargs="*", help="job ids or unique prefixes of them")
    _job_filters(p)
    p.add_argument("--all", action="store_true", help="every unfinished job (with the filters: every one that matches)")
    p.add_argument("--yes", "-y", action="store_true",
                   help="do not ask before cancelling more than {} jobs".format(CONFIRM_ABOVE))
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("report", help="write one self-contained HTML page showing a run: a timeline of its jobs "
                                      "on their workers, and a table per function")
    p.add_argument("--root", default=argparse.SUPPRESS)
    p.add_argument("--run", help="the run (a unique prefix of its id; default: the newest run)")
    p.add_argument("--html", required=True, metavar="FILE", help="the page to write")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `hither-fs ls | head`: the reader has all it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, LookupError, OSError, RuntimeError, RootError, CorruptFileError) as exc:
        print("hither-fs: {}".format(exc), file=sys.stderr)
        return 2
