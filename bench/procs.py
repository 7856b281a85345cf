"""The processes a benchmark drives: the paced stand-in, the app (``python -m app``), Gradio's
``gr.load_chat`` (``python -m bench.peer``), the floor (``python -m bench.floor``), each a
child process on a free loopback port; and a sampler of a process's CPU time and resident
memory (from ``/proc``, Linux only).

Children die with the benchmark (``PR_SET_PDEATHSIG``), so an interrupted run leaves nothing
behind. The app and the peer run without matplotlib, as they are deployed (``served``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

from tests.servers import Running, free_port

REPO = Path(__file__).resolve().parent.parent
# Runs the module named by the first argument with matplotlib made unimportable. Neither the
# Docker image nor the Space installs it (the test tools do, for the plots), and where it is
# importable Gradio 6.31 switches its backend before and after every update it sends (about
# 170 µs each): a cost the deployed app does not pay.
WITHOUT_MATPLOTLIB = (
    "import runpy, sys; sys.modules['matplotlib'] = None; "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """In a child, before exec: receive ``signum`` when the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signum)  # PR_SET_PDEATHSIG


class Child(Running):
    """A child process that answers ``health_path`` on ``url`` once it is ready."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], folder: Path, port: int,
        health_path: str, start_timeout: float = 120.0,
    ) -> None:
        self.name, self.command, self.env, self.folder = name, command, env, folder
        self.port, self.health_path, self.start_timeout = port, health_path, start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / f"{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.process.pid

    def start(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.folder, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + self.start_timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start; its log ends:\n{self.tail()}")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(self.url + self.health_path, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def base_env(path: Path = REPO) -> dict[str, str]:
    """The environment of a child: this one without the app's or Gradio's settings."""
    keep = {name: value for name, value in os.environ.items()
            if not name.startswith(("GRADIO_", "HF_"))}
    return {**keep, "PYTHONPATH": str(path), "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def standin(
    folder: Path, rate: float, tokens: int, port: int | None = None, fault_after: int = 20,
    keepalive: float = 15.0,
) -> Child:
    port = port or free_port()
    return Child(
        "standin",
        [sys.executable, "-m", "bench.standin", "--port", str(port), "--rate", str(rate),
         "--tokens", str(tokens), "--fault-after", str(fault_after),
         "--keepalive", str(keepalive)],
        base_env(), folder, port, "/health",
    )


def app(
    folder: Path, backend_url: str, app_path: Path = REPO, database_url: str | None = None,
    port: int | None = None, settings: dict[str, str] | None = None,
    snapshots: Path | None = None, args: tuple[str, ...] = (),
) -> Child:
    """``python -m app`` from ``app_path`` (another checkout, to compare), its database in
    ``folder`` unless ``database_url`` says otherwise, the per-user rate limit off, and
    ``settings`` (names as in docs/settings.md, any case), with the command-line ``args``
    (``--engine``). With ``snapshots``, the app runs under ``bench/traced.py``, which writes
    memory snapshots and counters there on SIGUSR1 and SIGUSR2."""
    port = port or free_port()
    command = (served("app", *args) if snapshots is None
               else served("bench.traced", str(snapshots), *args))
    env = base_env(app_path) | {
        "BACKEND_URL": backend_url, "APP_PORT": str(port),
        "DATABASE_URL": database_url or f"sqlite:///{folder / 'bench.db'}",
        "RATE_LIMIT_PER_MINUTE": "0",
    } | {name.upper(): value for name, value in (settings or {}).items()}
    if snapshots is not None:
        env["PYTHONPATH"] += os.pathsep + str(REPO)
    return Child("app", command, env, folder, port, "/healthz")


def served(module: str, *args: str) -> list[str]:
    """The command that runs ``module`` with ``args`` as it runs deployed: no matplotlib."""
    return [sys.executable, "-c", WITHOUT_MATPLOTLIB, module, *args]


def peer(folder: Path, backend_url: str, concurrency: int) -> Child:
    """Gradio's own ``gr.load_chat`` on the same stand-in (``bench/peer.py``)."""
    port = free_port()
    return Child(
        "peer",
        served("bench.peer", "--port", str(port), "--backend", backend_url,
               "--concurrency", str(concurrency)),
        base_env(), folder, port, "/config",
    )


def floor(folder: Path, backend_url: str) -> Child:
    """The least a Python proxy does, on the same stand-in (``bench/floor.py``)."""
    port = free_port()
    return Child(
        "floor", served("bench.floor", "--port", str(port), "--backend", backend_url),
        base_env(), folder, port, "/health",
    )


# -- CPU and memory of a process, sampled ------------------------------------------------


def cpu_seconds(pid: int, ended_children: bool = False) -> float:
    """User plus system CPU time of ``pid`` so far; with ``ended_children``, also that of the
    processes it started that have ended (once it has waited for them)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])
    if ended_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES


@dataclass(frozen=True)
class Mapping:
    """One mapping of ``/proc/PID/smaps``: its start address, name (a file, ``[heap]``,
    ``[stack]``, or ``""`` for anonymous memory), size and resident bytes."""

    start: int
    name: str
    size: int
    rss: int


def mappings(pid: int) -> dict[int, Mapping]:
    """The process's mappings by start address, from ``/proc/PID/smaps``."""
    found: dict[int, Mapping] = {}
    start, name, size = 0, "", 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and not head[0].endswith(":"):
            low, high = (int(a, 16) for a in head[0].split("-"))
            start, size, name = low, high - low, head[5] if len(head) > 5 else ""
        elif head[0] == "Rss:":
            found[start] = Mapping(start, name, size, int(head[1]) * 1024)
    return found


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (any of its threads) that still run."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended
            continue
    return found


def threads(pid: int) -> int:
    """How many threads ``pid`` runs."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


@dataclass
class Usage:
    cpu_seconds: float
    wall_seconds: float
    peak_rss_bytes: int
    start_rss_bytes: int
    end_rss_bytes: int
    samples: list[tuple[float, int]] = field(default_factory=list, repr=False)

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0


class Sampler:
    """CPU time and resident memory of a process between ``start()`` and ``stop()``; the
    memory is sampled every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[tuple[float, int]] = []
        self._cpu0 = self._wall0 = 0.0

    def start(self) -> Self:
        self._cpu0, self._wall0 = cpu_seconds(self.pid), time.monotonic()
        self._samples = [(0.0, rss_bytes(self.pid))]
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._samples.append((time.monotonic() - self._wall0, rss_bytes(self.pid)))
            except (OSError, IndexError):
                return

    def stop(self) -> Usage:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        wall = time.monotonic() - self._wall0
        try:
            cpu = cpu_seconds(self.pid) - self._cpu0
            self._samples.append((wall, rss_bytes(self.pid)))
        except OSError:
            cpu = 0.0
        values = [rss for _, rss in self._samples]
        return Usage(cpu, wall, max(values), values[0], values[-1], list(self._samples))
