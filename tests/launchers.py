"""Stand-ins for the job manager's Launcher (execution.jobs): no test process is started or killed."""

from __future__ import annotations


class FailingLauncher:
    """Every launch fails with `error` (the job is marked failed at submit); no worker is ever alive, so a
    fuzzed or stale pid never reaches a real process."""

    def __init__(self, error: Exception | None = None):
        self.error = error or OSError("no room for a worker")

    def launch(self, job_id: str, cache_dir: str) -> int:
        raise self.error

    def alive(self, pid: int) -> bool:
        return False

    def kill(self, pid: int) -> None:
        raise AssertionError(f"kill({pid}) of a process no test started")

    def reap(self) -> None:
        pass

    def exit_status(self, pid: int) -> int | None:
        return None


class IdleLauncher:
    """A 'worker' that stays alive and does nothing (a job that stays running) until it is killed."""

    def __init__(self) -> None:
        self.killed: set[int] = set()

    def launch(self, job_id: str, cache_dir: str) -> int:
        return 4242

    def alive(self, pid: int) -> bool:
        return pid not in self.killed

    def kill(self, pid: int) -> None:
        self.killed.add(pid)

    def reap(self) -> None:
        pass

    def exit_status(self, pid: int) -> int | None:
        return None
