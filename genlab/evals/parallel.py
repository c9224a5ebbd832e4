"""An eval's work shared by several processes: a list of jobs, claimed through files in the run folder.

The runner cuts an eval into jobs (a sample shard and its features, a likelihood bound, a model's
prompt metrics, a finished row, ...), each of which leaves its result on disk in the run folder and
is seeded by what it computes, never by who computes it. Every process walks the same list in the
same order and runs the first job that no process has claimed and whose inputs are finished; a claim
is a file created with ``O_EXCL`` in the launch's work folder, so no job runs twice, on one machine
or on several that share the run folder. When nothing is left to claim a process is done; the main
process then waits for the others' jobs and writes the report from what they left on disk. One
process runs the same list alone, so one process and many give the same numbers.

Processes come from a launcher (``torchrun``, ``accelerate launch``), or from the runner itself:
``spawn_workers`` starts fresh Python processes (one thread each by default) beside the calling one.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from genlab.errors import GenlabError, describe

WORK_DIR = ".work"  # in the run folder: one sub-folder per launch, removed when the launch ends
POLL_SECONDS = 0.2


@dataclass
class Job:
    """One piece of an eval. ``entry`` names the suite row it serves; ``step`` is the job's place in
    the order the row would compute its parts in alone. A failure fails the row and cancels its later
    steps, and the row reports the failure of its earliest step, as one process computing the row
    alone would. ``needs`` are the keys of the jobs whose results it reads."""

    key: str  # unique within the launch, safe as a file name
    run: Callable[[], object]
    entry: str | None = None
    needs: tuple[str, ...] = field(default_factory=tuple)
    step: int = 0


class WorkFolder:
    """The claims, finished jobs and failed rows of one launch, as empty files (and one-line reasons)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, out: Path) -> "WorkFolder":
        """A new work folder for this launch; whatever earlier launches into ``out`` left is removed
        (their results are in the run folder; their claims died with them)."""
        shutil.rmtree(Path(out) / WORK_DIR, ignore_errors=True)
        folder = cls(Path(out) / WORK_DIR / uuid.uuid4().hex[:12])
        for sub in ("claimed", "finished", "failed"):
            (folder.path / sub).mkdir(parents=True)
        return folder

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        try:
            self.path.parent.rmdir()  # .work, when no other launch is using it
        except OSError:
            pass

    def _create(self, sub: str, name: str, text: str = "") -> bool:
        try:
            fd = os.open(self.path / sub / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return True

    def claim(self, key: str) -> bool:
        return self._create("claimed", key, str(os.getpid()))

    def claimed(self, key: str) -> bool:
        return (self.path / "claimed" / key).exists()

    def finish(self, key: str, rank: int = 0, seconds: float = 0.0) -> None:
        self._create("finished", key, f"{rank} {seconds:.3f}")

    def finished(self, key: str) -> bool:
        return (self.path / "finished" / key).exists()

    def finished_count(self) -> int:
        return len(os.listdir(self.path / "finished"))

    def summary(self, processes: int) -> dict:
        """How the work went: jobs run by each process (rank by rank) and the wall seconds spent on
        each kind of job (shard, prompts, likelihood, row, ...), all processes together."""
        jobs, seconds = [0] * processes, {}
        for p in (self.path / "finished").iterdir():
            rank, spent = p.read_text().split()
            if 0 <= int(rank) < processes:
                jobs[int(rank)] += 1
            kind = p.name.split("-", 1)[0]
            seconds[kind] = round(seconds.get(kind, 0.0) + float(spent), 1)
        return {"jobs_per_process": jobs, "job_seconds": seconds}

    def fail(self, entry: str, step: int, reason: str) -> None:
        self._create("failed", f"{entry.encode().hex()}-{step:06d}", reason)

    def _failed_steps(self) -> dict[str, list]:
        steps: dict[str, list] = {}
        for p in (self.path / "failed").iterdir():
            entry, step = p.name.rsplit("-", 1)
            steps.setdefault(bytes.fromhex(entry).decode(), []).append((int(step), p))
        return steps

    def failed_before(self, entry: str, step: int) -> bool:
        """Whether an earlier step of the row failed (its later steps are not worth computing)."""
        return any(s < step for s, _ in self._failed_steps().get(entry, []))

    def failures(self) -> dict[str, str]:
        """{row: the reason its earliest failed step gave}."""
        return {entry: min(steps)[1].read_text(encoding="utf-8") for entry, steps in self._failed_steps().items()}


def work(jobs: list[Job], folder: WorkFolder, *, rank: int = 0, alive: Callable[[], None] = lambda: None,
         progress: Callable[[], None] = lambda: None) -> None:
    """Run unclaimed jobs of ``jobs`` whose inputs are finished until every job is claimed.

    ``alive()`` is called while waiting for another process's job and raises if that process is
    gone. A job that raises fails its row (the reason is recorded) and the row's other jobs are
    skipped; Ctrl-C stops the process, and the run resumes from what is on disk.
    """
    pending = list(jobs)
    while pending:
        if not folder.path.is_dir():  # the main process ended the launch: every job is finished
            return
        pending = [job for job in pending if not folder.claimed(job.key)]
        ready = next((job for job in pending if all(folder.finished(k) for k in job.needs)), None)
        if ready is None:
            if pending:  # waiting for inputs that another process is computing
                alive()
                time.sleep(POLL_SECONDS)
            continue
        if not folder.claim(ready.key):
            continue  # another process took it first
        failed = ready.entry is not None and folder.failed_before(ready.entry, ready.step)
        start = time.perf_counter()
        if not failed:
            try:
                ready.run()
            except KeyboardInterrupt:
                raise
            except (Exception, SystemExit) as exc:  # one row's failure must not cost the others
                if ready.entry is not None:
                    folder.fail(ready.entry, ready.step, str(exc) if isinstance(exc, GenlabError) else describe(exc))
                # a failure of the run's own jobs (the real data's features) shows when the main
                # process computes that result again for the report
        folder.finish(ready.key, rank, time.perf_counter() - start)
        progress()


def wait_for(jobs: list[Job], folder: WorkFolder, *, alive: Callable[[], None] = lambda: None,
             progress: Callable[[], None] = lambda: None) -> None:
    """Return once every job is finished (by any process)."""
    while not all(folder.finished(job.key) for job in jobs):
        alive()
        progress()
        time.sleep(POLL_SECONDS)
    progress()


# ----- processes the runner starts itself ------------------------------------------------------
def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Processes for an eval started without a launcher: one per CPU core this process may use, up to
    8 (one thread each: on a small shared machine two threads per process collapse when the other
    core is busy), or 1 when the models run on a GPU (``--device`` / ``GENLAB_DEVICE``, else CUDA or
    MPS where there is one), which does the work itself."""
    from genlab.runtime import resolve_device

    return 1 if resolve_device().type != "cpu" else max(1, min(usable_cores(), 8))


def _worker_main(work_fn: Callable, args: tuple, rank: int, parent: int, threads: int) -> None:
    """A spawned worker: its share of the jobs, one line on stderr if it breaks, quiet on Ctrl-C."""
    import signal
    import sys

    import torch

    torch.set_num_threads(threads)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # the parent ends its workers with SIGTERM: stop as Ctrl-C does

    def alive():
        if os.getppid() != parent:  # the eval that started this worker is gone
            raise KeyboardInterrupt

    try:
        work_fn(*args, rank=rank, alive=alive)
    except KeyboardInterrupt:
        sys.exit(130)
    except GenlabError as exc:
        print(f"Error: eval worker {rank}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


class Workers:
    """``count - 1`` spawned processes that run ``work_fn(*args, rank=r, alive=...)`` beside this
    one (rank 0). Used as a context manager: leaving it ends any worker still running."""

    def __init__(self, count: int, work_fn: Callable, args: tuple, *, threads: int = 1):
        self.count, self.work_fn, self.args, self.threads = count, work_fn, args, threads
        self.processes: list = []

    def __enter__(self) -> "Workers":
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked threads or locks
        # the workers' environment: one thread per process, no progress bars of their own
        overrides = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
                     "TQDM_DISABLE": "1"}
        saved = {k: os.environ.get(k) for k in overrides}
        os.environ.update(overrides)
        try:
            for rank in range(1, self.count):
                process = context.Process(target=_worker_main, name=f"genlab-eval-worker-{rank}",
                                          args=(self.work_fn, self.args, rank, os.getpid(), self.threads))
                process.start()
                self.processes.append(process)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return self

    def alive(self) -> None:
        """Raise if a worker stopped with an error (its jobs would never finish)."""
        for rank, process in enumerate(self.processes, start=1):
            if process.exitcode not in (None, 0):
                raise GenlabError(f"eval worker {rank} stopped (exit code {process.exitcode}); finished shards "
                                  "are kept in the run folder: run the same command again to resume")

    def __exit__(self, exc_type, *exc_info) -> None:
        deadline = time.monotonic() + 30
        if exc_type is None:  # every job is finished: the workers are leaving on their own
            for process in self.processes:
                process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
