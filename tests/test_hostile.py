"""Files that cannot trap anyone: a damaged or odd entry in the root fails its own job and
nothing else.

FIFOs, symbolic links (out of the root, or to ``/dev/zero``), a job directory that is a
plain file, deeply nested JSON and a 300 MB record are put where hither_fs expects its
own regular files - the way a person with a shell, a bad copy or a full disk could leave
them. A real worker then serves the queue, and every ``hither-fs`` command is run on the
root: each must finish (a hang fails the test at its timeout), without a traceback, while
the good jobs queued behind the bad ones finish with the right results.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hither_fs as hi
from conftest import REPO, TESTS
from jobfuncs import add, echo, make_list
from test_faults import QueueOnly, start_worker, stop

DEEP = 200000  # JSON nesting far beyond what a recursive parser survives


def run_cli(root, *args, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    return subprocess.run([sys.executable, '-m', 'hither_fs', '--root', root.path] + list(args),
                          env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def replace_with_fifo(path):
    os.unlink(path)
    os.mkfifo(path, 0o600)


def blob_of(job, name):
    ref = job.spec['args'][name]
    return os.path.join(job.root.layout.store, ref['sha1'][:2], ref['sha1'] + '.npy')


def snapshot(top):
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def hostile_root(root, tmp_path):
    """A queue whose oldest jobs are each damaged in their own way, then good jobs."""
    outside = tmp_path / 'outside'
    outside.mkdir()
    q = 'hostile'
    bad = {}
    with hi.Config(job_handler=QueueOnly(q)):
        for name in ['fifo state', 'fifo spec', 'dir is a file', 'dir is a symlink out', 'deep spec',
                     'deep state', 'huge spec', 'state symlink out']:
            bad[name] = add.run(x=1, y=len(bad))
        bad['fifo blob'] = echo.run(x=np.arange(10.0) + 1)
        bad['blob to /dev/zero'] = echo.run(x=np.arange(10.0) + 2)
        good = [add.run(x=i, y=100) for i in range(5)]
    j = bad
    replace_with_fifo(os.path.join(j['fifo state'].directory, 'state.json'))
    replace_with_fifo(os.path.join(j['fifo spec'].directory, 'spec.json'))
    d = j['dir is a file'].directory
    for n in os.listdir(d):
        os.unlink(os.path.join(d, n))
    os.rmdir(d)
    with open(d, 'w') as f:
        f.write('not a directory\n')
    d = j['dir is a symlink out'].directory
    os.rename(d, str(outside / 'job'))
    os.symlink(str(outside / 'job'), d)
    with open(os.path.join(j['deep spec'].directory, 'spec.json'), 'w') as f:
        f.write('{"args": ' + '[' * DEEP + ']' * DEEP + '}')
    with open(os.path.join(j['deep state'].directory, 'state.json'), 'w') as f:
        f.write('{"status": "queued", "x": ' + '{"a": ' * DEEP + '1' + '}' * DEEP + '}')
    with open(os.path.join(j['huge spec'].directory, 'spec.json'), 'r+') as f:
        f.truncate(300 << 20)  # 300 MB (sparse: cheap to make, not to read)
    target = outside / 'state.json'
    target.write_text(json.dumps({'status': 'queued'}))
    os.unlink(os.path.join(j['state symlink out'].directory, 'state.json'))
    os.symlink(str(target), os.path.join(j['state symlink out'].directory, 'state.json'))
    replace_with_fifo(blob_of(j['fifo blob'], 'x'))
    os.unlink(blob_of(j['blob to /dev/zero'], 'x'))
    os.symlink('/dev/zero', blob_of(j['blob to /dev/zero'], 'x'))
    return q, bad, good, str(outside)


def test_a_worker_fails_each_bad_job_alone_and_serves_the_rest(root, hostile_root):
    q, bad, good, outside = hostile_root
    before = snapshot(outside)
    log = open(os.path.join(os.path.dirname(root.path), 'worker.log'), 'w')
    w = start_worker(root, q, stderr=log)
    try:
        assert [job.wait(timeout=60) for job in good] == [i + 100 for i in range(5)]
        for name in ('fifo blob', 'blob to /dev/zero'):
            with pytest.raises(hi.JobError, match='not a regular file|symbolic link'):
                bad[name].wait(timeout=60)
        for name in ('fifo spec', 'deep spec', 'huge spec'):
            with pytest.raises(hi.JobError, match='spec.json: (is not a regular file|not valid JSON|is 314572800 bytes)'):
                bad[name].wait(timeout=60)
        # a damaged state is replaced by the worker that holds the job: the job runs
        for name in ('fifo state', 'deep state', 'state symlink out'):
            assert bad[name].wait(timeout=60) == 1 + list(bad).index(name), name
        assert w.poll() is None  # the worker is still serving
    finally:
        stop([w])
    # a job whose directory is a file or a symlink cannot be recorded: it fails when looked at
    for name in ('dir is a file', 'dir is a symlink out'):
        with pytest.raises(hi.CorruptFileError, match='not a job directory'):
            bad[name].wait(timeout=5)
    assert snapshot(outside) == before, 'something outside the root was written'
    assert not os.listdir(root.layout.running)


@pytest.mark.parametrize('command', [['ls'], ['ls', '--status', 'queued'], ['fsck'], ['fsck', '--repair'],
                                     ['du'], ['du', '--by', 'function'], ['workers', 'ls'],
                                     ['gc', '--older-than', '0', '--grace', '10m']])
def test_every_command_finishes_on_a_hostile_root(root, hostile_root, command):
    q, bad, good, outside = hostile_root
    before = snapshot(outside)
    proc = run_cli(root, *command)
    assert 'Traceback' not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    for name, job in bad.items():
        for per_job in (['show', job.id], ['logs', job.id], ['cancel', job.id]):
            proc = run_cli(root, *per_job)
            assert 'Traceback' not in proc.stderr, (name, per_job, proc.stderr)
    assert snapshot(outside) == before


def test_records_over_the_limit_are_refused_when_made_not_when_read(root, monkeypatch):
    """A spec or result too big to be read back as a record is refused as it is made (the
    limit is lowered here so the test stays small; it is 256 MB)."""
    from hither_fs import protocol
    monkeypatch.setattr(protocol, 'RECORD_LIMIT', 10000)
    with pytest.raises(ValueError, match=r'arguments of this job are 0 MB of JSON, more than a record may hold'):
        echo.run(x=list(range(5000)))
    job = echo.run(x=np.arange(5000.0))  # an array goes to the store: fine
    assert len(job.wait()) == 5000
    big = make_list.run(n=5000)  # its result (a list) is too big a record
    with pytest.raises(hi.JobError, match='more than a record may hold .* return big data as numpy arrays'):
        big.wait()


def test_a_symlinked_image_lock_file_is_not_followed(root, tmp_path):
    """The lock next to a pulled image, replaced by a link to a file outside the root: the
    file it points to is neither truncated nor written; the lock is a regular file again."""
    from hither_fs import containers
    precious = tmp_path / 'precious.txt'
    precious.write_text('do not truncate me\n')
    url = 'docker://127.0.0.1:9/none/such:latest'  # nothing listens: the pull itself fails
    os.makedirs(root.layout.images, exist_ok=True)
    lock = os.path.join(root.layout.images, containers.image_name(url, containers.image_format()) + '.lock')
    os.symlink(str(precious), lock)
    with pytest.raises(containers.ContainerError):
        containers.pulled_image(root, url)
    assert precious.read_text() == 'do not truncate me\n'
    assert not os.path.islink(lock)


@pytest.mark.parametrize('fmt', ['sif', 'sandbox'])
def test_an_image_another_node_published_during_this_pull_stands(root, monkeypatch, fmt):
    """Where file locks do not reach across nodes, two nodes may pull one image at once: the
    first to publish wins, and the second's image neither replaces it (a rename of a file
    would, under running jobs) nor its record. The pull itself is a fake here (no registry):
    it writes this node's image and, meanwhile, "another node" publishes its own."""
    from hither_fs import containers
    monkeypatch.setenv('HITHER_FS_IMAGE_FORMAT', fmt)
    url = 'docker://registry.invalid/lab/tool:1'
    final = os.path.join(root.layout.images, containers.image_name(url, fmt))

    def write_image(path, text):
        if fmt == 'sif':
            with open(path, 'w') as f:
                f.write(text)
        else:
            os.makedirs(path)
            with open(os.path.join(path, 'marker'), 'w') as f:
                f.write(text)

    def racing_pull(pull_url, dest, pull_fmt):
        write_image(dest, 'this node')
        write_image(final, 'the other node')  # published by the other node's pull meanwhile

    monkeypatch.setattr(containers, '_pull', racing_pull)
    facts = containers.pulled_image(root, url)
    image = final if fmt == 'sif' else os.path.join(final, 'marker')
    with open(image) as f:
        assert f.read() == 'the other node'
    assert facts['image_pulled'] is False
    standing = containers.tree_sha1(final) if fmt == 'sandbox' else containers.sha1_of_file(final)
    with open(final + '.json') as f:
        assert facts['image_sha1'] == json.load(f)['sha1'] == standing  # the record is of the image there
    assert [n for n in os.listdir(root.layout.images) if '.tmp-' in n] == []


@pytest.mark.parametrize('linked', ['job', 'shard'])
@pytest.mark.parametrize('openat2', [True, False], ids=['openat2', 'lstat'])
def test_a_job_directory_linked_out_of_the_root_is_never_read_through(root, tmp_path, monkeypatch, openat2, linked):
    """The same refusal with the kernel's openat2 (one open refuses any link below jobs/)
    and without it (an lstat of the job's directory and its shard, as on kernels before
    5.6), whether the job's directory or its whole shard was replaced by a link; nothing
    is written outside the root, even by cancel. (On a kernel without openat2 both cases
    take the lstat path: the refusal is what is tested, and it must hold there too.)"""
    from hither_fs import protocol
    from hither_fs.runtime import files
    if not openat2:
        monkeypatch.setattr(files, '_OPENAT2', None)
    job = add.run(x=1, y=2)
    assert job.wait() == 3
    with hi.Config(job_handler=QueueOnly('links')):
        queued = add.run(x=2, y=2)
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    for j in (job, queued):
        moved = j.directory if linked == 'job' else os.path.dirname(j.directory)
        if os.path.islink(moved):
            continue  # (both jobs in one shard)
        os.rename(moved, str(outside / os.path.basename(moved)))
        os.symlink(str(outside / os.path.basename(moved)), moved)
    before = snapshot(str(tmp_path / 'elsewhere'))
    again = hi.Job(job.id, root)
    with pytest.raises(protocol.JobDirectoryError, match='symbolic link'):
        again.wait()
    with pytest.raises(protocol.JobDirectoryError, match='symbolic link'):
        protocol.read_spec_checked(root, queued.id)
    with pytest.raises(protocol.JobDirectoryError, match='symbolic link'):
        hi.Job(queued.id, root).cancel()
    assert snapshot(str(tmp_path / 'elsewhere')) == before


def test_a_store_moved_to_another_disk_and_linked_back_still_works(root_path, tmp_path):
    """Links are refused below jobs/ only: an admin may move store/ (or logs/) elsewhere."""
    root = hi.Root.get(root_path)
    elsewhere = tmp_path / 'bigdisk-store'
    os.rename(root.layout.store, str(elsewhere))
    os.symlink(str(elsewhere), root.layout.store)
    job = echo.run(x=np.arange(5.0))
    assert np.array_equal(job.wait(), np.arange(5.0))
    assert os.listdir(str(elsewhere))
