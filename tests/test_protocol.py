"""The protocol's rules, one by one, in this process: milliseconds each, no workers.

Every transition of hither_fs.protocol is called directly on a real root in a
temporary directory; leases are judged with a fake clock and fake hosts.
"""

import json
import os

import pytest

from hither_fs import fsck, protocol
from hither_fs.cache import JobCache
from hither_fs.lease import Host, LeaseJudge, Recovery
from hither_fs.protocol import Outcome, Status, Token
from hither_fs.queue import BUCKET_AGE, BUCKET_SIZE, QueueReader, TicketWriter, iter_tickets
from hither_fs.root import Root, new_job_id, now_iso
from hither_fs.runtime.layout import host_label


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, '_taker', {'id': None, 'pid': None})  # set_taker() stays in the test
    return Root(str(tmp_path / 'root'))


def spec_of(job_id=None, queue='q', upstream=(), max_attempts=3):
    return {'id': job_id or new_job_id(), 'queue': queue, 'upstream': list(upstream), 'created': now_iso(),
            'max_attempts': max_attempts, 'function': {'name': 'f', 'version': '1'}, 'key': 'k'}


def submit(root, **kwargs):
    spec = spec_of(**kwargs)
    protocol.submit(root, spec)
    return spec


def tickets(root, queue='q'):
    return [path for path, _ in iter_tickets(root.layout, queue)]


def claim_next(root, worker='w-a', queue='q'):
    path = tickets(root, queue)[0]
    token = Token.parse(os.path.basename(path)[21:])
    return protocol.claim(root, path, worker, protocol.read_spec(root, token.job_id))


def status(root, job_id):
    return protocol.read_state(root, job_id)['status']


def finished(value=1):
    return Outcome(result={'value': value}, runtime={'start': now_iso()})


def test_submit_publishes_spec_and_state_and_one_ticket(root):
    spec = submit(root)
    job_dir = root.layout.job_dir(spec['id'])
    assert sorted(os.listdir(job_dir)) == ['spec.json', 'state.json']
    assert status(root, spec['id']) == 'queued'
    [ticket] = tickets(root)
    assert ticket.endswith('-{}.0.1'.format(spec['id']))
    assert [n for n in os.listdir(os.path.dirname(job_dir)) if n.startswith('.')] == []  # no half-built job


def test_claim_commit_leaves_two_files_and_no_token(root):
    spec = submit(root)
    claim = claim_next(root)
    assert claim.path == os.path.join(root.layout.running, '{}.0.1.w-a'.format(spec['id']))
    assert tickets(root) == [] and os.path.exists(claim.path)
    assert protocol.live_status(root, spec['id'], protocol.read_state(root, spec['id']))['status'] == 'running'
    assert protocol.commit(root, claim, finished(42)) == Status.FINISHED
    state = protocol.read_state(root, spec['id'])
    assert state['status'] == 'finished' and state['result'] == {'value': 42} and state['worker'] == 'w-a'
    assert os.listdir(root.layout.running) == []
    assert sorted(os.listdir(root.layout.job_dir(spec['id']))) == ['spec.json', 'state.json']


def test_a_second_claim_of_the_same_ticket_loses(root):
    submit(root)
    [ticket] = tickets(root)
    spec = {'queue': 'q'}
    assert protocol.claim(root, ticket, 'w-a', spec) is not None
    assert protocol.claim(root, ticket, 'w-b', spec) is None  # the name is gone: nothing to rename
    assert [t.worker for t, _ in protocol.running_claims(root)] == ['w-a']


def test_a_commit_after_the_claim_was_taken_back_is_discarded(root):
    spec = submit(root)
    stale = claim_next(root, 'w-a')
    # w-a is judged lost (stopped, cut off): its job goes back to the queue and runs elsewhere
    assert protocol.requeue(root, stale.token, stale.path, 'worker w-a: heartbeat stopped') == Status.QUEUED
    fresh = claim_next(root, 'w-b')
    assert fresh.token == Token(spec['id'], 1, 2, 'w-b')
    assert protocol.commit(root, stale, finished('stale')) is None       # w-a resumes: it lost
    assert protocol.commit(root, fresh, finished('fresh')) == Status.FINISHED
    assert protocol.commit(root, stale, finished('stale')) is None       # ... and never wins later either
    state = protocol.read_state(root, spec['id'])
    assert state['result'] == {'value': 'fresh'} and state['attempt'] == 2
    assert state['history'] == [{'attempt': 1, 'worker': 'w-a', 'ended': state['history'][0]['ended'],
                                 'why': 'worker w-a: heartbeat stopped', 'counted': True}]


def test_a_late_commit_after_the_final_one_changes_nothing(root):
    spec = submit(root)
    claim = claim_next(root)
    assert protocol.commit(root, claim, finished(1)) == Status.FINISHED
    before = protocol.read_state(root, spec['id'])
    assert protocol.commit(root, claim, Outcome(error=protocol.error_record('X', 'late', 'running'))) is None
    assert protocol.read_state(root, spec['id']) == before


def test_a_hand_back_does_not_count_as_an_attempt(root):
    spec = submit(root, max_attempts=2)
    for n in range(2):
        claim = claim_next(root)
        assert claim.token.attempt == 1
        assert protocol.requeue(root, claim.token, claim.path, 'time limit near', counted=False) == Status.QUEUED
    claim = claim_next(root)
    assert claim.token == Token(spec['id'], 2, 1, 'w-a')
    assert protocol.commit(root, claim, finished()) == Status.FINISHED
    assert protocol.read_state(root, spec['id'])['handed_back'] == 2


def test_too_many_hand_backs_fail_the_job(root):
    spec = submit(root, max_attempts=1)
    claim = claim_next(root)
    assert protocol.requeue(root, claim.token, claim.path, 'time limit near', counted=False) == Status.QUEUED
    claim = claim_next(root)
    assert protocol.requeue(root, claim.token, claim.path, 'time limit near', counted=False) == Status.ERROR
    error = protocol.read_state(root, spec['id'])['error']
    assert error['type'] == 'WorkerLostError' and 'handed back 2 times' in error['message']
    assert 'give the allocations a longer time limit' in error['message']  # the last hand-back's reason
    assert tickets(root) == [] and os.listdir(root.layout.running) == []
    other = submit(root, max_attempts=1)
    for _ in range(2):
        claim = claim_next(root)
        protocol.requeue(root, claim.token, claim.path, 'its worker could not start it', counted=False)
    message = protocol.read_state(root, other['id'])['error']['message']
    assert 'handed back 2 times before it could finish (last: its worker could not start it)' == message


def test_lost_workers_max_attempts_times_fail_the_job(root):
    spec = submit(root, max_attempts=2)
    claim = claim_next(root)
    assert protocol.requeue(root, claim.token, claim.path, 'dead') == Status.QUEUED
    claim = claim_next(root)
    assert claim.token.attempt == 2
    assert protocol.requeue(root, claim.token, claim.path, 'dead again') == Status.ERROR
    state = protocol.read_state(root, spec['id'])
    assert state['error']['type'] == 'WorkerLostError' and 'worker lost 2 times' in state['error']['message']
    assert len(state['history']) == 2


def test_commit_of_an_error_and_of_a_cancellation(root):
    a, b = submit(root), submit(root)
    assert protocol.commit(root, claim_next(root), Outcome(error=protocol.error_record(
        'ValueError', 'no', 'running', module='builtins'))) == Status.ERROR
    assert protocol.commit(root, claim_next(root), Outcome(error=protocol.cancelled_record(
        b['id'], 'while running'))) == Status.CANCELLED
    assert (status(root, a['id']), status(root, b['id'])) == ('error', 'cancelled')
    assert protocol.summary(protocol.read_state(root, a['id'])) == 'ValueError: no'


def test_cancel_a_queued_job_takes_its_ticket(root):
    spec = submit(root)
    assert protocol.cancel(root, spec['id']) == Status.CANCELLED
    assert tickets(root) == [] and status(root, spec['id']) == 'cancelled'
    assert protocol.cancel(root, spec['id']) == Status.CANCELLED  # again: nothing changes


def test_cancel_a_running_job_asks_its_worker(root):
    spec = submit(root)
    claim = claim_next(root, 'w-a')
    assert protocol.cancel(root, spec['id']) == Status.RUNNING
    assert os.path.exists(root.layout.cancel_request('w-a', spec['id']))
    assert status(root, spec['id']) == 'queued' and os.path.exists(claim.path)  # only its worker moves it


def test_recovery_cancels_instead_of_requeueing_when_the_lost_worker_was_asked_to(root):
    spec = submit(root)
    claim_next(root, 'w-a')
    protocol.cancel(root, spec['id'])
    clock = FakeClock()
    recovery = Recovery(root, LeaseJudge(30, host=Host('observer', 'ns'), clock=clock))
    recovery.run()
    clock.t += 31
    assert recovery.run() == 1
    assert status(root, spec['id']) == 'cancelled' and tickets(root) == []


def test_pipeline_promotion_when_the_upstream_job_finishes(root):
    up = submit(root)
    downs = [submit(root, upstream=[up['id']]) for _ in range(2)]
    assert status(root, downs[0]['id']) == 'pending'
    assert sorted(os.listdir(root.layout.downstream_dir(up['id']))) == sorted(d['id'] for d in downs)
    told = []
    assert protocol.commit(root, claim_next(root), finished(5), promoted=told.append) == Status.FINISHED
    assert [status(root, d['id']) for d in downs] == ['queued', 'queued']  # promoted by the commit, no sweep needed
    assert told == [2]  # (a worker wakes its siblings: the queued jobs are theirs too)
    assert not os.path.exists(root.layout.downstream_dir(up['id']))  # its waiter markers are gone
    assert os.listdir(root.layout.pending) == [] and len(tickets(root)) == 2
    assert protocol.commit(root, claim_next(root), finished(6), promoted=told.append) == Status.FINISHED
    assert told == [2]  # nothing waited for that one: nobody is told


def test_a_job_submitted_after_its_upstream_finished_is_queued_at_once(root):
    up = submit(root)
    protocol.commit(root, claim_next(root), finished())
    down = submit(root, upstream=[up['id']])
    assert status(root, down['id']) == 'queued' and os.listdir(root.layout.pending) == []


def test_an_upstream_failure_fails_the_whole_chain(root):
    up = submit(root)
    mid = submit(root, upstream=[up['id']])
    end = submit(root, upstream=[mid['id']])
    protocol.commit(root, claim_next(root), Outcome(error=protocol.error_record('ValueError', 'bad', 'running')))
    for job in (mid, end):
        state = protocol.read_state(root, job['id'])
        assert state['status'] == 'error' and state['error']['type'] == 'UpstreamJobError'
    assert up['id'] in protocol.read_state(root, mid['id'])['error']['message']
    assert os.listdir(root.layout.pending) == [] and tickets(root) == []


def test_the_pending_sweep_catches_a_missed_notification(root):
    up = submit(root)
    down = submit(root, upstream=[up['id']])
    os.unlink(os.path.join(root.layout.downstream_dir(up['id']), down['id']))  # as if the marker was lost
    protocol.commit(root, claim_next(root), finished())
    assert status(root, down['id']) == 'pending'
    looked = {}
    assert protocol.sweep_pending(root, looked, now=0.0) == 1
    assert status(root, down['id']) == 'queued'


def test_the_pending_sweep_looks_again_only_after_min_age(root):
    up = submit(root)
    down = submit(root, upstream=[up['id']])
    looked = {}
    assert protocol.sweep_pending(root, looked, now=0.0, min_age=30) == 0
    assert looked == {down['id']: 0.0}
    os.unlink(os.path.join(root.layout.downstream_dir(up['id']), down['id']))
    protocol.commit(root, claim_next(root), finished())
    assert protocol.sweep_pending(root, looked, now=10.0, min_age=30) == 0  # looked at 10 s ago
    assert protocol.sweep_pending(root, looked, now=31.0, min_age=30) == 1


def test_forward_moves_a_ticket_into_another_queue_once(root):
    spec = submit(root, queue='resource-x')
    [ticket] = tickets(root, 'resource-x')
    assert protocol.forward(root, ticket, 'local', served_by='x') is True
    assert protocol.forward(root, ticket, 'local') is False
    assert tickets(root, 'resource-x') == [] and len(tickets(root, 'local')) == 1
    state = protocol.read_state(root, spec['id'])
    assert (state['status'], state['queue'], state['served_by']) == ('queued', 'local', 'x')
    claim = claim_next(root, 'w-a', 'local')
    assert claim.job_id == spec['id']
    assert protocol.requeue(root, claim.token, claim.path, 'lost') == Status.QUEUED
    assert len(tickets(root, 'local')) == 1  # back to the queue it was sent to, for the resource's workers
    assert protocol.commit(root, claim_next(root, 'w-b', 'local'), finished()) == Status.FINISHED
    assert protocol.read_state(root, spec['id'])['served_by'] == 'x'


def test_finish_from_cache(root):
    spec = submit(root)
    [ticket] = tickets(root)
    assert protocol.finish_from_cache(root, ticket, spec['id'], {'value': 7}, served_by='x')
    state = protocol.read_state(root, spec['id'])
    assert state['status'] == 'finished' and state['cached'] and state['result'] == {'value': 7}


def test_a_token_whose_job_directory_was_deleted_is_dropped(root):
    import shutil
    spec = submit(root)
    claim = claim_next(root)
    shutil.rmtree(root.layout.job_dir(spec['id']))
    with pytest.raises(protocol.JobGoneError):
        protocol.commit(root, claim, finished())
    assert protocol.fail(root, claim.path, spec['id'], protocol.error_record('X', 'y', 'z')) is False
    assert os.listdir(root.layout.running) == []


def test_a_full_disk_during_commit_gives_the_claim_back_untouched(root, monkeypatch):
    spec = submit(root)
    claim = claim_next(root)

    def full(path, data):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(protocol, 'overwrite', full)
    with pytest.raises(OSError, match='No space'):
        protocol.commit(root, claim, finished())
    assert os.path.exists(claim.path) and status(root, spec['id']) == 'queued'
    monkeypatch.undo()
    assert protocol.commit(root, claim, finished()) == Status.FINISHED  # the retry works


# -- crash consistency: a process killed between two steps -----------------------------------------

def test_killed_between_take_and_state_is_moved_on_by_lease_recovery(root):
    spec = submit(root)
    claim = claim_next(root, 'w-a')
    protocol.set_taker('w-a')
    held = protocol._take(root, claim.path, spec['id'])  # ... and the committing worker w-a dies here
    assert held == os.path.join(root.layout.running, '.taken.w-a.{}.0.1.w-a'.format(spec['id']))
    assert [(t, tok.job_id) for t, tok, _ in protocol.taken_tokens(root)] == [('w-a', spec['id'])]
    protocol.set_taker('w-b')  # (this test process plays the recovering worker now)
    clock = FakeClock()
    recovery = Recovery(root, LeaseJudge(30, host=Host('observer', 'ns'), clock=clock), me='w-b')
    assert recovery.run() == 0  # w-a might still be writing: judged by its lease like a claim
    clock.t += 31
    assert recovery.run() == 1
    state = protocol.read_state(root, spec['id'])
    assert state['status'] == 'queued' and 'recording' in state['history'][0]['why']
    assert protocol.taken_tokens(root) == []
    assert protocol.commit(root, claim, finished('stale')) is None  # w-a, resumed, loses
    claim = claim_next(root, 'w-b')
    assert claim.token.attempt == 2
    assert protocol.commit(root, claim, finished(3)) == Status.FINISHED
    assert not [f for f in fsck.fsck(root) if f.damage]


def test_a_taker_that_resumes_after_recovery_publishes_nothing(root):
    spec = submit(root)
    claim = claim_next(root, 'w-a')
    protocol.set_taker('w-a')
    held = protocol._take(root, claim.path, spec['id'])
    protocol.set_taker('w-b')
    with open(held, 'w') as late:  # w-a opened the file it took, and was stopped right then
        assert protocol.recover_taken(root, held, 'worker w-a: heartbeat stopped') == Status.QUEUED
        late.write('{"status": "finished", "result": {"value": "stale"}}')  # resumed: writes into nothing
    assert protocol._publish(root, protocol.Held(held, {}), spec['id'], {'status': 'finished'}) is False
    assert protocol.read_state(root, spec['id'])['status'] == 'queued'
    assert protocol.commit(root, claim_next(root, 'w-b'), finished(3)) == Status.FINISHED
    assert protocol.read_state(root, spec['id'])['result'] == {'value': 3}


def test_fsck_moves_on_a_token_whose_taker_died(root):
    spec = submit(root)
    claim = claim_next(root, 'w-a')
    dead = 'w-{}-999999999-abcdef'.format(host_label())  # a worker of this host, pid gone
    protocol.set_taker(dead)
    held = protocol._take(root, claim.path, spec['id'])
    protocol.set_taker('p-fsck')
    age(held)
    findings = fsck.fsck(root, repair=True)
    assert [(f.problem.split(' taken by ')[1], f.repaired) for f in findings] == [
        (dead + ', which died before it wrote the job\'s next state', True)]
    assert status(root, spec['id']) == 'queued' and len(tickets(root)) == 1


def test_killed_between_publish_and_ticket_is_repaired_by_fsck(root):
    spec = spec_of()
    protocol.publish(root, spec)  # the submitter dies before release()
    age(root.layout.state_file(spec['id']))
    findings = fsck.fsck(root, repair=True)
    assert [f.repaired for f in findings if 'without a token' in f.problem] == [True]
    assert protocol.commit(root, claim_next(root), finished()) == Status.FINISHED


def test_fsck_does_not_repair_a_job_claimed_and_committed_while_it_looked(root, monkeypatch):
    """A worker claims the job while fsck lists (after running/, before the queue: fsck's
    listing misses its token), and takes its token to commit right before fsck looks again:
    fsck reports nothing and puts no second ticket in (that ran the job twice)."""
    spec = submit(root)
    age(root.layout.state_file(spec['id']))
    moves = []
    real_iter_tickets, real_has_token = protocol.iter_tickets, protocol.has_token

    def claimed_while_listed(layout, queue):
        if not moves:
            moves.append(claim_next(root, 'w-a'))
        return real_iter_tickets(layout, queue)

    def taken_while_looked_again(root_, job_id):
        protocol.set_taker('w-a')
        moves.append(protocol._take(root, moves[0].path, spec['id']))
        protocol.set_taker('p-fsck')
        return real_has_token(root_, job_id)
    monkeypatch.setattr(protocol, 'iter_tickets', claimed_while_listed)
    monkeypatch.setattr(protocol, 'has_token', taken_while_looked_again)
    assert fsck.fsck(root, repair=True) == []
    assert len(moves) == 2 and tickets(root) == []
    os.rename(moves[1], moves[0].path)  # (the commit goes on: its token back where commit takes it from)
    assert protocol.commit(root, moves[0], finished()) == Status.FINISHED
    assert tickets(root) == [] and protocol.find_tokens(root) == {}


def test_has_token_sees_a_token_moving_on_while_it_looks(root, monkeypatch):
    """Listed in the order tokens move: a claim between two listings is still seen."""
    spec = submit(root)
    real_iter_tickets = protocol.iter_tickets

    def claimed_right_after_listing(layout, queue):
        listed = list(real_iter_tickets(layout, queue))
        claim_next(root, 'w-a')
        return listed
    monkeypatch.setattr(protocol, 'iter_tickets', claimed_right_after_listing)
    assert protocol.has_token(root, spec['id'])
    monkeypatch.setattr(protocol, 'iter_tickets', real_iter_tickets)
    assert not protocol.has_token(root, new_job_id())


def test_young_tokenless_jobs_are_left_alone(root):
    spec = spec_of()
    protocol.publish(root, spec)  # a submitter in the middle of its work
    assert fsck.fsck(root, repair=True) == []
    assert tickets(root) == []


def test_a_token_left_after_the_final_state_is_dropped(root):
    submit(root)
    claim = claim_next(root)
    protocol.commit(root, claim, finished())
    leftover = os.path.join(root.layout.running, claim.token.name)
    open(leftover, 'w').close()  # as if a retransmitted rename had put it back
    age(leftover)
    findings = fsck.fsck(root, repair=True)
    assert any(f.repaired and 'token of a job that is finished' in f.problem for f in findings), findings
    assert not os.path.exists(leftover)


def test_two_tokens_for_one_job_are_damage(root):
    spec = submit(root)
    [ticket] = tickets(root)
    open(os.path.join(root.layout.pending, Token(spec['id']).name), 'w').close()
    assert any(f.damage and 'has 2 tokens' in f.problem for f in fsck.fsck(root))


def age(path, seconds=3600):
    t = os.stat(path).st_mtime - seconds
    os.utime(path, (t, t))


# -- leases, on a fake clock -----------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def heartbeat(beat, host='node1', pidns='pid:[1]', pid=4242):
    return {'beat': beat, 'host': host, 'pidns': pidns, 'pid': pid, 'create_time': 1.0}


def test_a_worker_is_lost_when_its_beat_stops_for_a_lease_on_the_observers_clock():
    clock = FakeClock()
    judge = LeaseJudge(30, host=Host('node2', 'pid:[2]'), clock=clock, alive=lambda pid, ct: True)
    assert judge.lost('w', heartbeat(1)) is None
    clock.t += 29
    assert judge.lost('w', heartbeat(1)) is None
    clock.t += 2
    assert 'heartbeat stopped for 31 s' in judge.lost('w', heartbeat(1))


def test_a_worker_asking_for_a_longer_lease_gets_it_from_every_observer():
    clock = FakeClock()
    judge = LeaseJudge(30, host=Host('node2', 'pid:[2]'), clock=clock, alive=lambda pid, ct: True)
    long, short = dict(heartbeat(1), lease=600), dict(heartbeat(1), lease=5)
    assert judge.lost('long', long) is None and judge.lost('short', short) is None
    clock.t += 31
    assert judge.lost('long', long) is None  # its own lease, not the observer's
    assert 'heartbeat stopped for 31 s' in judge.lost('short', short)  # never shorter than the observer's
    clock.t += 570
    assert 'heartbeat stopped for 601 s' in judge.lost('long', long)


def test_a_beating_worker_is_never_lost_whatever_the_clocks_say():
    clock = FakeClock()
    judge = LeaseJudge(30, host=Host('node2', 'pid:[2]'), clock=clock, alive=lambda pid, ct: False)
    for beat in range(100):  # its own timestamps could be years off: only the counter matters
        clock.t += 20
        assert judge.lost('w', dict(heartbeat(beat), last_beat='1970-01-01T00:00:00Z')) is None


def test_a_missing_heartbeat_is_judged_like_a_stopped_one():
    clock = FakeClock()
    judge = LeaseJudge(30, host=Host('node2', 'pid:[2]'), clock=clock)
    assert judge.lost('w', None) is None
    clock.t += 30
    assert 'no heartbeat file' in judge.lost('w', None)


def test_on_the_same_host_a_dead_pid_is_lost_at_once():
    judge = LeaseJudge(30, host=Host('node1', 'pid:[1]'), clock=FakeClock(), alive=lambda pid, ct: False)
    assert '(pid 4242 on node1) is dead' in judge.lost('w', heartbeat(1))


def test_another_node_of_the_same_name_never_judges_by_pid():
    # two nodes with one host name (or one kernel, other pid namespaces): pids mean nothing
    judge = LeaseJudge(30, host=Host('node1', 'pid:[9]'), clock=FakeClock(), alive=lambda pid, ct: False)
    assert judge.lost('w', heartbeat(1)) is None


def test_recovery_hands_back_only_the_lost_workers_jobs(root):
    a, _ = submit(root), submit(root)
    ca = claim_next(root, 'w-a')
    cb = claim_next(root, 'w-b')
    clock = FakeClock()
    beats = {'w-a': 1, 'w-b': 1}
    for w in beats:
        os.makedirs(root.layout.worker_dir(w))

    def write_beats():
        for w, n in beats.items():
            if os.path.isdir(root.layout.worker_dir(w)):
                with open(root.layout.heartbeat(w), 'w') as f:
                    json.dump(heartbeat(n, host='elsewhere'), f)
    write_beats()
    recovery = Recovery(root, LeaseJudge(30, host=Host('observer', 'ns'), clock=clock), me='w-me')
    assert recovery.run() == 0
    for _ in range(4):
        clock.t += 10
        beats['w-b'] += 1  # w-b beats, w-a is stopped
        write_beats()
        recovery.run()
    assert status(root, a['id']) == 'queued' and not os.path.exists(ca.path)
    assert os.path.exists(cb.path)
    assert not os.path.exists(root.layout.worker_dir('w-a'))  # the lost worker's directory is gone
    assert 'heartbeat stopped' in protocol.read_state(root, a['id'])['history'][0]['why']
    assert protocol.commit(root, cb, finished()) == Status.FINISHED
    assert protocol.commit(root, ca, finished()) is None


# -- queues -------------------------------------------------------------------------------------------

def test_buckets_roll_over_and_the_reader_serves_the_front_first(root, monkeypatch):
    monkeypatch.setattr('hither_fs.queue.BUCKET_SIZE', 3)
    writer = TicketWriter(root.layout)
    paths = [writer.place('q', Token(new_job_id()).name) for _ in range(7)]
    buckets = sorted(os.listdir(root.layout.queue_dir('q')))
    assert len(buckets) == 3 and [len(os.listdir(os.path.join(root.layout.queue_dir('q'), b))) for b in buckets] == [3, 3, 1]
    reader = QueueReader(root.layout, 'q')
    served = []
    while True:
        candidates = reader.candidates()
        if not candidates:
            break
        served.append(candidates[0])
        reader.drop(candidates[0])
        os.unlink(candidates[0])
    assert served == paths  # first in, first out, across buckets


def test_an_old_empty_bucket_is_removed_and_its_writer_starts_another(root):
    writer = TicketWriter(root.layout, clock=lambda: 0.0)
    first = writer.place('q', Token(new_job_id()).name)
    os.unlink(first)
    bucket = os.path.dirname(first)
    old = '{:020d}'.format(0) + os.path.basename(bucket)[20:]
    os.rename(bucket, os.path.join(os.path.dirname(bucket), old))  # made long ago
    reader = QueueReader(root.layout, 'q')
    assert reader.candidates() == []
    assert not os.path.exists(os.path.join(os.path.dirname(bucket), old))
    second = writer.place('q', Token(new_job_id()).name)  # its bucket is gone: a new one
    assert os.path.exists(second)


def test_the_bell_rings_for_readers_that_listened_before(root):
    reader = QueueReader(root.layout, 'q')
    assert reader.bell_rang() is False  # first look: nothing to compare with
    writer = TicketWriter(root.layout)
    writer.ring('q')
    assert reader.bell_rang() is True
    assert reader.bell_rang() is False
    writer.ring('q')  # within RING_INTERVAL: not rung again
    assert reader.bell_rang() is False
    writer.ring('q', force=True)
    assert reader.bell_rang() is True


def test_bucket_constants_bound_a_directory():
    assert BUCKET_SIZE <= 1000 and BUCKET_AGE <= 60


# -- in-flight de-duplication ------------------------------------------------------------------------

def test_the_first_in_flight_marker_wins_and_a_failed_holder_is_succeeded(root):
    cache, key = JobCache(), 'k' * 40
    assert cache.in_flight(root, key) == (-1, None)
    assert cache.claim_in_flight(root, key, 0, 'a' * 16) is True
    assert cache.claim_in_flight(root, key, 0, 'b' * 16) is False  # the same number: one winner
    assert cache.in_flight(root, key) == (0, 'a' * 16)
    # a's job failed: the next submitters race for number 1, and one wins
    assert cache.claim_in_flight(root, key, 1, 'b' * 16) is True
    assert cache.claim_in_flight(root, key, 1, 'c' * 16) is False
    assert cache.in_flight(root, key) == (1, 'b' * 16)
    cache.release_in_flight(root, key, 'b' * 16)  # b finished (its entry is in the cache)
    assert cache.in_flight(root, key) == (-1, None)


def test_a_marker_claimed_while_markers_are_released_is_caught_by_the_cache(root):
    cache, key = JobCache(), 'k' * 40
    cache.claim_in_flight(root, key, 0, 'a' * 16)
    cache.record(root, key, dict(spec_of('a' * 16), key=key), {'value': 1}, is_error=False)
    cache.release_in_flight(root, key, 'a' * 16)
    assert cache.lookup(root, key)['value'] == 1  # what a submitter that just claimed a number sees


def test_format_1_roots_are_refused_with_what_to_do(tmp_path):
    path = tmp_path / 'old'
    path.mkdir()
    (path / 'root.json').write_text('{"format": 1, "mode": "private"}')
    from hither_fs.root import RootError
    with pytest.raises(RootError, match='format 1 .* cannot read without misreading them.*move it aside'):
        Root(str(path))


def test_a_records_indentation_grows_it_at_most_128_times_its_compact_form():
    """protocol._record_size measures a result as written only when its compact form could
    reach the record limit: the indentation of the deepest value allowed (100 levels of
    one-element lists and dicts) stays under 128 times the compact size."""
    import json
    from hither_fs import protocol
    from hither_fs.runtime.files import dumps
    for leaf in (0, [0] * 50, {'a': 0}):
        value = leaf
        for depth in range(99):
            value = [value] if depth % 2 else {'k': value}
        assert len(dumps(value)) < 128 * len(json.dumps(value))
    assert protocol.record_size([1, 2]) == len(json.dumps([1, 2]))


def test_a_step_after_the_commit_that_fails_leaves_the_commit_made(root, monkeypatch):
    """Once the final state is published the commit is made: a failing step after it (here
    listing the waiters, as an NFS ESTALE would) is logged, and the sweep promotes them."""
    import errno
    up = submit(root)
    down = submit(root, upstream=[up['id']])
    real = os.listdir

    def stale(path, real=real):
        if path == root.layout.downstream_dir(up['id']):
            raise OSError(errno.ESTALE, 'Stale file handle', path)
        return real(path)
    monkeypatch.setattr(protocol.os, 'listdir', stale)
    assert protocol.commit(root, claim_next(root), finished(5)) == Status.FINISHED
    monkeypatch.setattr(protocol.os, 'listdir', real)
    assert status(root, up['id']) == 'finished' and status(root, down['id']) == 'pending'
    seen = {}
    protocol.sweep_pending(root, seen, now=0.0)
    protocol.sweep_pending(root, seen, now=3600.0)
    assert status(root, down['id']) == 'queued'


def test_a_published_job_finished_from_the_cache_promotes_those_waiting_for_it(root):
    """A submitter that attached to a job another one then finishes from the cache
    (hither_fs.submit._create_once) may have made jobs wait for it: they are queued."""
    published = spec_of()
    protocol.publish(root, published)
    down = submit(root, upstream=[published['id']])
    assert status(root, down['id']) == 'pending'
    protocol.finish_unreleased(root, published, {'value': 1}, from_cache={'key': 'k'})
    assert status(root, published['id']) == 'finished' and status(root, down['id']) == 'queued'


def test_an_upstream_job_that_gc_puts_back_as_it_is_looked_at_does_not_fail_its_waiter(root, monkeypatch):
    """The waiter reads no state (the job is set aside), then finds no job set aside
    (gc has just put it back): it waits, it does not fail."""
    from hither_fs.runtime.files import temp_name
    up = submit(root)
    job_dir = root.layout.job_dir(up['id'])
    aside = temp_name(job_dir)
    os.rename(job_dir, aside)  # gc's remove_job sets it aside ...
    real = protocol.listdir

    def put_back_first(path):  # ... and puts it back between the waiter's two looks
        if path == os.path.dirname(job_dir) and os.path.isdir(aside):
            os.rename(aside, job_dir)
        return real(path)
    monkeypatch.setattr(protocol, 'listdir', put_back_first)
    down = submit(root, upstream=[up['id']])
    assert status(root, down['id']) == 'pending'
