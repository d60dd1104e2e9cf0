# Run hither functions by name (from the hither FAQ), in-process and on workers.
import hither_fs as hi


@hi.function('add', '0.1.0')
def add(x, y):
    return x + y


@hi.function('get_the_answer', '0.1.0')
def get_the_answer():
    return 42


if __name__ == '__main__':
    x = hi.run('add', x=1, y=2).wait()
    assert x == 3

    # calling directly runs synchronously; .run() makes a job
    assert get_the_answer() == 42
    job = get_the_answer.run()
    assert job.wait() == 42

    with hi.Config(job_handler=hi.ParallelJobHandler(num_workers=2)):
        job = hi.run('add', x=[1, 2], y=[3])
        print('add by name on a worker:', job.wait(), 'job', job.id, 'on', job.get_runtime_info()['host'])
