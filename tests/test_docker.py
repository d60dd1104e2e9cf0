"""Container jobs in real Docker (HITHER_USE_SINGULARITY=FALSE, or hi.Config(container_runtime='docker')).

tests/run.sh starts the Docker daemon (dockerd, as root), imports the test
image's root file system with ``docker import`` as hither-fs-test/bookworm-numpy,
and puts the test user in the ``docker`` group. Pulls come from a loopback
registry (tests/oci_registry.py). The tests that need Docker fail (never skip)
under CI when it is missing; the rules at the top need nothing.
"""

import json
import os
import signal
import subprocess

import numpy as np
import pytest

import hither_fs as hi
from conftest import missing_infrastructure, run_python
from test_containers import wait_until
from containerfuncs.funcs import (container_facts, container_limits, fails_in_container, gpu_probe,
                                  sleep_in_container, sumsqr_in_container, writes_into_the_root)
from hither_fs import containers, docker
from hither_fs.runtime.layout import host_and_pid
from oci_registry import Registry, make_oci_layout

CACHE = os.environ.get('HITHER_FS_TEST_CACHE', '/var/tmp/hither_fs-test')
SANDBOX = os.path.join(CACHE, 'images', 'bookworm-numpy')
DOCKER_IMAGE = 'docker://hither-fs-test/bookworm-numpy:latest'


def docker_cli(*args, timeout=120):
    return subprocess.run(['docker'] + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def docker_works():
    """Fail (under CI) or skip, with the reason, unless Docker runs the test image for this user."""
    how = 'run the tests with `sudo bash tests/run.sh` (it starts dockerd and imports the test image)'
    try:
        proc = docker_cli('run', '--rm', '--network', 'none', '--user', '{}:{}'.format(os.getuid(), os.getgid()),
                          DOCKER_IMAGE[len('docker://'):], 'python3', '-c', 'import numpy')
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing_infrastructure('cannot run `docker` ({}): {}'.format(exc, how))
    if proc.returncode != 0:
        missing_infrastructure('`docker run {}` failed with code {}: {}; {}'.format(
            DOCKER_IMAGE, proc.returncode, proc.stderr.strip()[-2000:], how))


@pytest.fixture
def use_docker(docker_works, monkeypatch):
    monkeypatch.setenv('HITHER_USE_SINGULARITY', 'FALSE')


@pytest.fixture(scope='module')
def registry(tmp_path_factory, docker_works):
    """The test image at docker://127.0.0.1:PORT/hither/test:latest; Docker's copies are removed after."""
    if not os.path.isdir(SANDBOX):
        missing_infrastructure('the container test image {} is missing: run `sudo bash tests/run.sh`'.format(SANDBOX))
    layout = str(tmp_path_factory.mktemp('oci') / 'layout')
    layer = make_oci_layout(SANDBOX, layout)
    reg = Registry(layout)
    reg.layer = layer
    yield reg
    for tag in ('latest', 'no-such-tag'):
        docker_cli('rmi', '--force', reg.url(tag)[len('docker://'):])
    reg.close()


def containers_of(job_id):
    """Ids of the Docker containers (running or not) labelled with the job's id."""
    proc = docker_cli('ps', '--all', '--quiet', '--filter', 'label=hither_fs.job=' + job_id)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


# -- the rules (no Docker needed) --------------------------------------------------------

def test_the_runtime_asked_for_wins_else_the_hosts_own(tmp_path, monkeypatch):
    monkeypatch.delenv('HITHER_USE_SINGULARITY', raising=False)
    assert containers.requested_runtime(None) is None
    assert containers.requested_runtime('docker') == 'docker'
    monkeypatch.setenv('HITHER_USE_SINGULARITY', 'FALSE')
    assert containers.requested_runtime(None) == 'docker'
    assert containers.requested_runtime('singularity') == 'singularity'  # hi.Config beats the variable
    monkeypatch.setenv('HITHER_USE_SINGULARITY', 'TRUE')
    assert containers.requested_runtime(None) == 'singularity'
    # unset: Apptainer/Singularity where its command exists, else Docker, else a clear error
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    monkeypatch.setenv('PATH', str(bin_dir))
    with pytest.raises(hi.ContainerError, match=r"neither 'singularity' \(Apptainer provides it\) nor 'docker'"):
        containers.choose_runtime(None)
    for name, expected in (('apptainer', None), ('docker', 'docker'), ('singularity', 'singularity')):
        (bin_dir / name).write_text('#!/bin/sh\n')
        (bin_dir / name).chmod(0o755)
        if expected is None:  # spython runs `singularity`: an `apptainer` alone is not enough
            with pytest.raises(hi.ContainerError, match='neither'):
                containers.choose_runtime(None)
        else:
            assert containers.choose_runtime(None) == expected
    assert containers.choose_runtime('docker') == 'docker'


def test_docker_takes_docker_images_only_and_says_so_at_run(root_path):
    assert docker.image_reference('docker://ubuntu:22.04') == 'ubuntu:22.04'
    for image in ('library://alpine', SANDBOX, '/x/image.sif'):
        with pytest.raises(hi.ContainerError, match='Docker runs docker:// images only'):
            docker.image_reference(image)
    with hi.Config(container=SANDBOX, container_runtime='docker'):
        with pytest.raises(hi.ContainerError, match='Docker runs docker:// images only, not ' + SANDBOX):
            sumsqr_in_container.run(x=np.array([1]))
    assert not os.path.exists(os.path.join(root_path, 'jobs')) or not [
        f for _, _, fs in os.walk(os.path.join(root_path, 'jobs')) for f in fs]


def test_each_image_has_a_pull_record_of_its_own(root):
    names = {docker._record_path(root, ref) for ref in ('org/img:v1', 'org_img:v1', 'x/' + 'a' * 70 + ':1',
                                                        'x/' + 'a' * 70 + ':2')}
    assert len(names) == 4


def test_docker_run_line_has_the_users_ids_no_network_and_the_limits(tmp_path):
    args = docker.run_arguments('img:1', ['python3', '-m', 'x'], {'A': '1'}, str(tmp_path / 'j.0'),
                                [{'path': '/r'}, {'path': '/c', 'readonly': True}], cpus=2, memory_gb=0.5,
                                gpus='all', labels={'hither_fs.job': 'j'})
    line = ' '.join(args)
    assert '--user {}:{}'.format(os.getuid(), os.getgid()) in line
    assert '--network none' in line and '--cpus 2 --memory 536870912 --gpus all' in line
    assert '--mount type=bind,source=/r,target=/r --mount type=bind,source=/c,target=/c,readonly' in line
    assert '--entrypoint python3 img:1 -m x' in line and '--name hither_fs-j.0' in line
    assert '--network bridge' in ' '.join(docker.run_arguments('i', ['p'], {}, '/o', [], network=True))


# -- real Docker --------------------------------------------------------------------------

def test_job_runs_in_docker_as_the_submitting_user(root_path, parallel, use_docker, monkeypatch):
    monkeypatch.setenv('HITHER_LEAK_TEST', 'leaky')
    with hi.Config(job_handler=parallel(1), container=DOCKER_IMAGE):
        job = container_facts.run()
        facts = job.wait(timeout=120)
        big = writes_into_the_root.run(n=100000)
        assert np.array_equal(big.wait(timeout=120), np.arange(100000, dtype=np.float64))
    assert facts['in_docker'] and not facts['in_apptainer']
    assert (facts['uid'], facts['gid']) == (os.getuid(), os.getgid())
    assert set(os.getgroups()) <= set(facts['groups'])
    assert 'HITHER_LEAK_TEST' not in facts['env']
    assert facts['hither_fs_file'].startswith(os.path.join(root_path, 'code', 'runtime'))  # the stand-in
    assert job.get_console_output() == {'stdout': 'hello from the container\n', 'stderr': 'and to stderr\n'}
    info = job.get_runtime_info()
    assert info['container_runtime'] == 'docker' and info['container_exit_code'] == 0
    assert info['image'] == DOCKER_IMAGE and info['image_id'].startswith('sha256:')
    command = ' '.join(info['container_command'])
    assert command.startswith('docker run --rm') and '--network none' in command
    # nothing in the root became root's (Docker's daemon runs as root)
    foreign = [os.path.join(d, n) for d, dirs, files in os.walk(root_path) for n in dirs + files
               if os.lstat(os.path.join(d, n)).st_uid != os.getuid()]
    assert foreign == []
    assert containers_of(job.id) == []  # --rm


def test_network_none_unless_asked_and_resources_become_limits(root_path, parallel, use_docker):
    with hi.Config(job_handler=parallel(1), container=DOCKER_IMAGE, job_resources={'cpus': 1, 'memory_gb': 0.25}):
        closed = container_limits.run().wait(timeout=120)
        with hi.Config(container_network=True):
            opened = container_limits.run().wait(timeout=120)
    assert closed['interfaces'] == ['lo']
    assert 'eth0' in opened['interfaces']
    assert closed['memory_limit'] == str(256 * 1024 ** 2)
    assert closed['cpu_quota'].split()[0] in ('100000', '1000000')  # 1 CPU of a 100 ms (or 1 s) period


def test_a_gpu_request_reaches_docker_and_its_refusal_is_the_jobs_error(root_path, parallel, use_docker):
    # no GPU (nor NVIDIA's container toolkit) here: Docker refuses --gpus, and the job says Docker's words
    with hi.Config(job_handler=parallel(1), container=DOCKER_IMAGE):
        job = gpu_probe.run()
        with pytest.raises(hi.ContainerError) as info:
            job.wait(timeout=120)
    assert isinstance(info.value, hi.JobError)
    assert str(info.value).startswith('ContainerError: the container exited with code 125')
    assert 'Error response from daemon' in str(info.value)
    assert '--gpus all' in ' '.join(job.get_runtime_info()['container_command'])


def test_error_in_docker_keeps_type_message_traceback(root_path, parallel, use_docker):
    with hi.Config(job_handler=parallel(1), container=DOCKER_IMAGE):
        with pytest.raises(ValueError, match='bad input') as info:
            fails_in_container.run(message='bad input').wait(timeout=120)
    assert 'raise ValueError(message)' in info.value.remote_traceback


def test_seeds_container_example_gives_the_same_results_in_docker_and_apptainer(root_path, tmp_path, docker_works):
    if not os.path.isdir(SANDBOX):
        missing_infrastructure('the Apptainer test image {} is missing'.format(SANDBOX))
    outputs = {}
    for runtime, image, flag in (('docker', DOCKER_IMAGE, 'FALSE'), ('singularity', SANDBOX, 'TRUE')):
        proc = run_python('examples/container_pipeline.py', timeout=300, env={
            'HITHER_FS_EXAMPLE_IMAGE': image, 'HITHER_USE_SINGULARITY': flag,
            'HITHER_FS_ROOT': str(tmp_path / ('root-' + runtime))})
        assert proc.returncode == 0, proc.stderr
        assert 'ran in ' + image in proc.stdout
        outputs[runtime] = [line for line in proc.stdout.splitlines() if not line.startswith('ran in')]
        runtimes = []
        for dirpath, _, files in os.walk(str(tmp_path / ('root-' + runtime) / 'jobs')):
            if 'state.json' in files:
                with open(os.path.join(dirpath, 'state.json')) as f:
                    runtimes.append(json.load(f)['runtime']['container_runtime'])
        assert runtimes == [runtime] * 3
    assert outputs['docker'] == outputs['singularity'] == ['x = [16 25]  product = [16. 25.]']


@pytest.mark.parametrize('how', ['cancel', 'timeout'])
def test_cancel_and_timeout_kill_the_docker_container(root_path, parallel, use_docker, how):
    with hi.Config(job_handler=parallel(1), container=DOCKER_IMAGE, job_timeout=10 if how == 'timeout' else None):
        job = sleep_in_container.run(seconds=600)
        try:
            wait_until(lambda: job.get_console_output()['stdout'] == 'going to sleep\n', 60,
                       'the job to start in its container')
            assert len(containers_of(job.id)) == 1
            if how == 'cancel':
                assert job.cancel()
            assert job.wait_done(timeout=60) == ('cancelled' if how == 'cancel' else 'error')
        finally:
            job.cancel()
    wait_until(lambda: containers_of(job.id) == [], 30, 'the container to be removed')
    if how == 'timeout':
        with pytest.raises(hi.JobTimeoutError):
            job.get_result()


def test_a_killed_workers_container_is_stopped_by_the_next_worker(root_path, parallel, use_docker):
    with hi.Config(job_handler=parallel(1), container=DOCKER_IMAGE, max_attempts=1):
        job = sleep_in_container.run(seconds=600)
        try:
            wait_until(lambda: job.get_console_output()['stdout'] == 'going to sleep\n', 60,
                       'the job to start in its container')
            _, worker_pid = host_and_pid(job.get_state()['worker'].partition('-')[2])
            os.kill(worker_pid, signal.SIGKILL)  # its job process dies with it; its container does not
            assert len(containers_of(job.id)) == 1
            # the handler starts a new worker, which finds the job lost and clears what the
            # killed worker left on this host: its scratch directory and its container
            with pytest.raises(hi.WorkerLostError):
                job.wait(timeout=120)
            wait_until(lambda: containers_of(job.id) == [], 30, 'the orphaned container to be removed')
        finally:
            job.cancel()


def test_many_workers_pull_a_docker_image_once_per_host(root_path, registry, use_docker):
    url = registry.url('latest')
    handler = hi.ParallelJobHandler(num_workers=8)
    try:
        with hi.Config(job_handler=handler, container=url):
            jobs = [sumsqr_in_container.run(x=np.arange(i + 1)) for i in range(8)]
            results = [j.wait(timeout=240) for j in jobs]
    finally:
        handler.halt()
    assert results == [sum(k * k for k in range(i + 1)) for i in range(8)]
    assert registry.count('GET', 'blobs', registry.layer) == 1
    infos = [j.get_runtime_info() for j in jobs]
    assert sum(1 for i in infos if i['image_pulled']) == 1
    assert len({i['image_id'] for i in infos}) == 1
    assert len({i['worker'] for i in infos}) >= 3  # several workers really asked at once
    records = [n for n in os.listdir(os.path.join(root_path, 'images', 'docker', os.uname().nodename))
               if n.endswith('.json')]
    assert len(records) == 1


def test_a_failed_docker_pull_is_tried_once_for_many_jobs(root_path, parallel, registry, use_docker):
    url = registry.url('no-such-tag')
    with hi.Config(job_handler=parallel(3), container=url):
        jobs = [sumsqr_in_container.run(x=np.array([i])) for i in range(5)]
        for j in jobs:
            with pytest.raises(hi.ContainerError, match='could not pull container image .*no-such-tag.*'
                                                        'manifest unknown'):
                j.wait(timeout=120)
    assert registry.count('GET', 'manifests', 'no-such-tag') <= 2
