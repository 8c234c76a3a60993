"""Simulated worker machines for the dask pool: a scheduler and N dask workers.

Everything listens on 127.0.0.1 with no dashboard. Each dask worker runs in
its own mount namespace (``unshare -m``, as root) where the deployment folder
is replaced, at the same path, by the worker's own copy of the kit and the
data: like a separate machine, it sees neither the dispatcher's submissions,
logs and predictions (no ``events/``) nor what the other worker writes. Each
worker is the leader of its own process group, so that killing the group is
losing the machine (the worker and the ``ramp-test`` it runs).

The processes run the server's Python (it has ``distributed``); they are
stopped when the context manager exits.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .ramp_board_setup import free_port

# One task per worker thread; no second run of a task whose worker died.
SCHEDULER_SETTINGS = {
    "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0",
    "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
}
_WAIT_FOR_WORKERS = (
    "import sys; from distributed import Client\n"
    "with Client(sys.argv[1], timeout=60) as client:\n"
    "    client.wait_for_workers(int(sys.argv[2]), timeout=60)\n"
)


class NamespacesUnavailable(RuntimeError):
    """Mount namespaces cannot be made here (not root, or no unshare)."""


def check_namespaces() -> None:
    """Raise :class:`NamespacesUnavailable` unless ``unshare -m`` works."""
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        raise NamespacesUnavailable(f"unshare -m failed: {probe.stderr.strip()}")


class SimulatedHosts:
    """A dask scheduler and workers named ``host-a``, ``host-b``, ...

    Parameters
    ----------
    python : path
        The server's Python.
    deployment : path
        The deployment folder; each worker sees its own copy of ``ramp-kits/``
        and ``ramp-data/`` there.
    folder : path
        Where the workers' copies and logs go.
    n_workers : int
    env : dict
        The processes' environment.

    Attributes
    ----------
    address : str
        The scheduler's.
    workers : dict
        Worker name to its process.
    """

    def __init__(self, python, deployment, folder, n_workers, env):
        self.python, self.deployment = Path(python), Path(deployment)
        self.folder, self.n_workers, self.env = Path(folder), n_workers, env
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.workers: dict[str, subprocess.Popen] = {}
        self._scheduler = None

    def _start(self, command, log: Path, **options) -> subprocess.Popen:
        with open(log, "wb") as output:
            return subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, **options
            )

    def start_worker(self, name: str) -> None:
        """A worker on its own simulated machine (a copy of kit and data)."""
        host = self.folder / name
        copy = host / "deployment"
        for part in ("ramp-kits", "ramp-data"):
            shutil.copytree(self.deployment / part, copy / part)
        worker = [
            str(self.python), "-m", "distributed.cli.dask_worker", self.address,
            "--name", name, "--nthreads", "1", "--no-nanny", "--no-dashboard",
            "--host", "127.0.0.1", "--local-directory", str(host / "dask"),
        ]  # fmt: skip
        # In the new namespace: put the copy in place of the deployment, then
        # become the worker (same process, so its group is the machine).
        script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
        command = [
            "unshare", "-m", "--propagation", "private", "sh", "-c", script,
            "sh", str(copy), str(self.deployment), *worker,
        ]  # fmt: skip
        # The machine's own temporary folder: what a lost machine leaves there
        # (a submission's scratch folder) goes with the test's folder.
        (host / "tmp").mkdir()
        self.workers[name] = self._start(
            command, host / "worker.log", cwd=host,
            env={**self.env, "TMPDIR": str(host / "tmp")}, start_new_session=True,
        )  # fmt: skip

    def wait_for_workers(self, count: int) -> None:
        subprocess.run(
            [str(self.python), "-c", _WAIT_FOR_WORKERS, self.address, str(count)],
            env=self.env,
            check=True,
            timeout=180,
        )

    def __enter__(self) -> SimulatedHosts:
        check_namespaces()
        self.folder.mkdir(parents=True, exist_ok=True)
        port = self.address.rsplit(":", 1)[1]
        scheduler = [
            str(self.python), "-m", "distributed.cli.dask_scheduler",
            "--host", "127.0.0.1", "--port", port, "--no-dashboard",
        ]  # fmt: skip
        self._scheduler = self._start(
            scheduler,
            self.folder / "scheduler.log",
            cwd=self.folder,
            env={**self.env, **SCHEDULER_SETTINGS},
            start_new_session=True,
        )
        try:
            for index in range(self.n_workers):
                self.start_worker(f"host-{'abcdefgh'[index]}")
            self.wait_for_workers(self.n_workers)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def lose_machine_running(self, submission: str, timeout: float = 120) -> str:
        """Kill the worker (and all it runs) once it runs ``submission``'s ramp-test.

        Returns
        -------
        str
            The name of the worker that was killed.
        """
        workers = {process.pid: name for name, process in self.workers.items()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid, parent in _ramp_test_processes(submission):
                chain = [pid, *_ancestors(parent)]
                hit = [i for i, ancestor in enumerate(chain) if ancestor in workers]
                if hit:
                    # The worker, and the run it started in a session of its
                    # own (ramp-test, or the sandbox's runner), with all they
                    # started: a machine lost.
                    worker, run = chain[hit[0]], chain[hit[0] - 1]
                    for group in (worker, run, pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(group, signal.SIGKILL)
                    self.workers[workers[worker]].wait()
                    return workers[worker]
            time.sleep(0.2)
        raise TimeoutError(f"No worker started ramp-test for {submission}.")

    def __exit__(self, *exc_info) -> None:
        for process in [*self.workers.values(), self._scheduler]:
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _ancestors(pid: int) -> list[int]:
    """``pid`` and its parents, up to the first process (ramp-test may run in a
    sandbox: bubblewrap between it and the dask worker)."""
    chain = []
    while pid > 1 and pid not in chain:
        chain.append(pid)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        pid = int(re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE).group(1))
    return chain


def _ramp_test_processes(submission: str) -> list[tuple[int, int]]:
    """(process id, parent's id) of each ``ramp-test --submission <submission>``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if any(a.endswith(b"ramp-test") for a in arguments) and (
            submission.encode() in arguments
        ):
            parent = re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE)
            found.append((int(entry.name), int(parent.group(1))))
    return found
