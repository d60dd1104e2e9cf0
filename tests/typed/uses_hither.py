"""A user's typed script: mypy sees the return type of a hither function through its jobs."""
import concurrent.futures

import hither_fs as hi


@hi.function('typed_add', '0.1.0')
def typed_add(x: int, y: int) -> int:
    return x + y


job = typed_add.run(x=1, y=2)
reveal_type(job)  # noqa: F821 (mypy's)
total: int = job.wait()
also: int = job.result(timeout=5)
done = concurrent.futures.wait([job])
with hi.Config(job_handler=hi.ParallelJobHandler(2), container_runtime='docker'):
    pass
wrong: str = job.wait()
