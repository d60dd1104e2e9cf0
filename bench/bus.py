"""What the root's protocol costs a shared filesystem: metadata operations and inodes per
job, the cost of a claim at 100 and at 100,000 jobs queued, and an idle worker.

    python bench/bus.py [--jobs N] [--deep N] [--idle S] [--compare-with REV]

On a cluster filesystem every metadata operation (open, stat, rename, mkdir,
unlink, readdir, lock...) is a round trip to a metadata server, so these are
counted, not timed: every such system call that names a path (or a
directory) inside the root, made by any process of the run - submitter,
workers, their job processes - is counted with ``strace -f``. ``read``,
``write``, ``close`` and ``fstat`` of an open file are data or local
operations and not counted (listed apart). Four measurements, side by side in
one run:

1. **Per job, end to end**: one process submits N no-op jobs to
   ``ParallelJobHandler(2)`` and waits for every result. The marginal cost is
   reported: the difference between a run of N+100 and a run of 100 jobs,
   divided by N, so start-up costs do not flatter it. With ``--compare-with``
   the same is measured for an older hither_fs taken from git (default: the
   last version with format-1 roots), in the same run.
2. **Inodes per finished job**: files and directories under ``jobs/`` divided
   by the number of jobs.
3. **Claim cost by queue depth**: a worker's claim (find the front of the
   queue, read the spec, rename the ticket) timed and counted with 100 and
   with 100,000 jobs queued.
4. **An idle worker**: after 30 s without work, its metadata operations per
   second over ``--idle`` seconds, and how soon it starts a job queued then.

Needs ``strace`` (Debian: ``apt install strace``).
"""

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

#: The system calls that cost a metadata server a round trip (when they name the root).
METADATA = ["openat", "openat2", "open", "creat", "stat", "lstat", "newfstatat", "statx", "access", "faccessat",
            "faccessat2", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
            "link", "linkat", "symlink", "symlinkat", "readlink", "readlinkat", "chmod", "fchmod", "fchmodat",
            "chown", "fchown", "lchown", "fchownat", "utimensat", "getdents64", "flock", "fcntl", "truncate",
            "ftruncate", "statfs", "fstatfs", "inotify_add_watch"]
NOT_COUNTED = ["fstat"]
LAST_FORMAT_1 = "a3a4df3"

_CALL = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\((.*)")


def count_ops(log, root):
    """{syscall: count} of the calls in an ``strace -f -yy`` log that touch ``root``."""
    counted, apart = collections.Counter(), collections.Counter()
    inside = (root + "/", root + ">", '"' + root + '"')
    with open(log, errors="replace") as f:
        for line in f:
            m = _CALL.match(line)
            if not m or "resumed>" in line:
                continue
            name, rest = m.group(2), m.group(3)
            rest = re.sub(r"AT_FDCWD<[^>]*>", "AT_FDCWD", rest)
            if not any(s in rest for s in inside):
                continue
            if name == "fcntl" and "F_SETLK" not in rest and "F_OFD_SETLK" not in rest:
                continue
            if name == "newfstatat" and (rest.split(",", 2)[1:2] == [' ""'] or "AT_EMPTY_PATH" in rest):
                name = "fstat"  # os.fstat of an open file, the way newer C libraries spell it
            if name in NOT_COUNTED:
                apart[name] += 1
            elif name in METADATA:
                counted[name] += 1
    return counted, apart


def strace(cmd, log, env=None, cwd=None):
    full = ["strace", "-f", "-qq", "-yy", "-s", "256", "-o", log, "-e", "trace=" + ",".join(METADATA + NOT_COUNTED)]
    return subprocess.run(full + cmd, env=env, cwd=cwd, capture_output=True, text=True)


DRIVER = r'''
import os, sys, time
sys.path.insert(0, sys.argv[3])
import hither_fs as hi
from noop import noop
n, root = int(sys.argv[1]), sys.argv[2]
handler = hi.ParallelJobHandler(num_workers=2)
with hi.Config(job_handler=handler, root=root):
    jobs = [noop.run(i=i) for i in range(n)]
    hi.wait()
    assert [j.get_result() for j in jobs] == list(range(n))
handler.halt()
'''


def per_job(n, workdir, package_parent, label, warm=1000):
    """Marginal metadata operations per job, and inodes per finished job.

    The root first holds ``warm`` finished jobs (so that its 256 shard directories
    exist, as in any root in use), then a run of 100 jobs and one of 100 + n jobs
    are traced.
    """
    totals = {}
    root = os.path.join(workdir, label)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_parent, HERE]), HITHER_FS_ROOT=root)
    warmup = subprocess.run([sys.executable, "-c", DRIVER, str(warm), root, HERE], env=env, cwd=workdir,
                            capture_output=True, text=True)
    if warmup.returncode != 0:
        raise RuntimeError("{} run failed: {}".format(label, warmup.stderr[-2000:]))
    for k in (100, 100 + n):
        log = root + ".strace"
        proc = strace([sys.executable, "-c", DRIVER, str(k), root, HERE], log, env=env, cwd=workdir)
        if proc.returncode != 0:
            raise RuntimeError("{} run failed: {}".format(label, proc.stderr[-2000:]))
        totals[k] = count_ops(log, root)
        os.remove(log)
    jobs = warm + 100 + 100 + n
    entries = sum(len(dirs) + len(files) for _, dirs, files in os.walk(os.path.join(root, "jobs")))
    inodes = (entries - len(os.listdir(os.path.join(root, "jobs")))) / jobs  # the shards are shared
    small, big = totals[100][0], totals[100 + n][0]
    marginal = {name: (big[name] - small[name]) / n for name in set(big) | set(small)}
    apart = (totals[100 + n][1]["fstat"] - totals[100][1]["fstat"]) / n
    return marginal, inodes, apart


def old_version(rev, workdir):
    """The package as it was at ``rev``, exported from git into ``workdir``; None without git."""
    dest = os.path.join(workdir, "old-" + rev)
    try:
        archive = subprocess.run(["git", "-C", REPO, "archive", rev, "hither_fs"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    os.makedirs(dest)
    subprocess.run(["tar", "-x", "-C", dest], input=archive.stdout, check=True)
    return dest


def fill_queue(root, count):
    """Queue ``count`` more no-op jobs, submitted through the protocol (in-process)."""
    from hither_fs import protocol
    from hither_fs.root import new_job_id, now_iso
    for _ in range(count):
        protocol.submit(root, {"id": new_job_id(), "queue": "deep", "upstream": [], "created": now_iso(),
                               "function": {"name": "noop", "version": "0.1.0"}, "args": {"i": 0}})


def time_claims(root, reader, claims):
    """Median seconds per claim over batches of 20, as a worker claims: the front of the
    queue, the spec read and checked, the ticket renamed."""
    from hither_fs import protocol
    from hither_fs.queue import ticket_token

    def one_claim():
        for path in reader.candidates():
            reader.drop(path)
            token = protocol.Token.parse(ticket_token(os.path.basename(path)))
            spec, _ = protocol.read_spec_checked(root, token.job_id)
            claim = protocol.claim(root, path, "w-bench", spec)
            if claim is not None:
                return claim
        raise AssertionError("queue ran dry")
    samples = []
    for _ in range(claims // 20):
        t0 = time.perf_counter()
        for _ in range(20):
            one_claim()
        samples.append((time.perf_counter() - t0) / 20)
        fill_queue(root, 20)  # (not timed) the depth stays where it was
    return samples


def claim_cost(depths, workdir, rounds=5, claims=200):
    """Seconds per claim at each depth, measured in turns (so that the machine's moods
    fall on both alike): the median of every batch of each depth."""
    import hither_fs as hi  # noqa: F401  (the real package, as a worker imports it)
    from hither_fs.queue import QueueReader
    from hither_fs.root import Root
    roots = {d: Root(os.path.join(workdir, "depth-{}".format(d))) for d in depths}
    for d in depths:
        fill_queue(roots[d], d + 20)
    readers = {d: QueueReader(roots[d].layout, "deep") for d in depths}
    samples = {d: [] for d in depths}
    for d in depths:
        time_claims(roots[d], readers[d], 20)  # warm: the first listing happens here for every depth alike
    for _ in range(rounds):
        for d in depths:
            samples[d] += time_claims(roots[d], readers[d], claims)
    return {d: statistics.median(samples[d]) for d in depths}, roots


def claim_ops(depth_root, claims, workdir):
    """Metadata operations per claim, counted with strace in a child process."""
    code = r'''
import os, sys
sys.path.insert(0, sys.argv[3])
from hither_fs import protocol
from hither_fs.queue import QueueReader, ticket_token
from hither_fs.root import Root
root = Root(sys.argv[1]); reader = QueueReader(root.layout, "deep"); n = 0
while n < int(sys.argv[2]):
    for path in reader.candidates():
        reader.drop(path)
        token = protocol.Token.parse(ticket_token(os.path.basename(path)))
        spec, _ = protocol.read_spec_checked(root, token.job_id)
        if protocol.claim(root, path, "w-bench2", spec) is not None:
            n += 1
            break
'''
    log = os.path.join(workdir, "claims.strace")
    strace([sys.executable, "-c", code, depth_root.path, str(claims), REPO], log)
    counted, _ = count_ops(log, depth_root.path)
    os.remove(log)
    return sum(counted.values()) / claims


def idle_worker(workdir, seconds, samples=3):
    """Metadata operations per second of a worker idle for 30 s, and how soon it starts a
    job queued then (``samples`` times, each after 31 s idle again)."""
    from noop import noop

    import hither_fs as hi
    root = os.path.join(workdir, "idle")
    hi.Root(root)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, HERE]))
    worker = subprocess.Popen([sys.executable, "-m", "hither_fs", "worker", "--root", root, "--queue", "idle",
                               "--log-level", "warning"], env=env, stdin=subprocess.DEVNULL)

    class Idle(hi.JobHandler):
        def queue_for(self, r):
            return "idle"
    starts = []
    try:
        time.sleep(31)
        log = os.path.join(workdir, "idle.strace")
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-yy", "-s", "256", "-o", log, "-e",
                                   "trace=" + ",".join(METADATA), "-p", str(worker.pid)])
        time.sleep(seconds)
        tracer.terminate()
        tracer.wait()
        counted, _ = count_ops(log, root)
        for k in range(samples):
            if k:
                time.sleep(31)
            with hi.Config(job_handler=Idle(), root=root):
                t0 = time.time()
                job = noop.run(i=k)
                while not os.listdir(os.path.join(root, "running")) and not job.is_done():
                    time.sleep(0.002)
                starts.append(time.time() - t0)
                job.wait(timeout=30)
    finally:
        worker.terminate()
        worker.wait()
    return sum(counted.values()) / seconds, counted, starts


def show_ops(title, ops):
    total = sum(ops.values())
    detail = ", ".join("{} {:.2f}".format(k, v) for k, v in sorted(ops.items(), key=lambda kv: -kv[1]) if v >= 0.005)
    print("  {:40} {:7.2f}   ({})".format(title, total, detail))


def report_per_job(args, workdir):
    print("1. metadata operations per no-op job, end to end (submit, claim, run, commit, wait)")
    ops, inodes, fstats = per_job(args.jobs, workdir, REPO, "new")
    show_ops("hither_fs (this checkout)", ops)
    print("  {:40} {:7.2f}   (not counted: fstat of an open file)".format("", fstats))
    old = old_version(args.compare_with, workdir) if args.compare_with else None
    old_inodes = None
    if old:
        old_ops, old_inodes, _ = per_job(args.jobs, workdir, old, "old")
        show_ops("hither_fs {} (format 1)".format(args.compare_with), old_ops)
        print("  {:40} {:6.1f}x fewer".format("this checkout", sum(old_ops.values()) / sum(ops.values())))
    print("2. inodes per finished job (its directory included)")
    print("  {:40} {:7.2f}".format("hither_fs (this checkout)", inodes))
    if old_inodes is not None:
        print("  {:40} {:7.2f}".format("hither_fs {} (format 1)".format(args.compare_with), old_inodes))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs of the per-job measurement (default 500)")
    parser.add_argument("--deep", type=int, default=100_000, help="jobs queued for the deep queue (default 100000)")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds to watch the idle worker (default 60)")
    parser.add_argument("--compare-with", default=LAST_FORMAT_1,
                        help="git revision of an older hither_fs to measure alongside ('' for none)")
    parser.add_argument("--parts", default="1234", help="which measurements to make (default 1234)")
    args = parser.parse_args()
    if shutil.which("strace") is None:
        sys.exit("bench/bus.py counts system calls with strace: apt install strace")
    if "1" in args.parts or "2" in args.parts:
        with tempfile.TemporaryDirectory() as workdir:
            report_per_job(args, workdir)
    if "3" in args.parts:
        print("3. one claim (find the front, read the spec, rename the ticket) by queue depth")
        with tempfile.TemporaryDirectory() as workdir:
            times, roots = claim_cost([100, args.deep], workdir)
            for depth in (100, args.deep):
                print("  {:40} {:7.3f} ms  {:5.2f} metadata ops".format(
                    "{:,} queued".format(depth), times[depth] * 1e3, claim_ops(roots[depth], 100, workdir)))
            print("  {:40} {:7.2f}x".format("deep / shallow (time)", times[args.deep] / times[100]))
    if "4" in args.parts:
        print("4. a worker idle for 30 s")
        with tempfile.TemporaryDirectory() as workdir:
            rate, detail, starts = idle_worker(workdir, args.idle)
        show_ops("metadata operations per second", {k: v / args.idle for k, v in detail.items()})
        print("  {:40} {}".format("a job queued then starts after (s)", ", ".join("{:.3f}".format(t) for t in starts)))


if __name__ == "__main__":
    main()
