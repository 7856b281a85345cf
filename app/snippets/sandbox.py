"""Run a user's code snippet in a bubblewrap sandbox, with limits, without blocking the app.

``run_snippet`` writes the snippet into a fresh temporary directory and starts Debian's
``bwrap`` (bubblewrap) as an asyncio subprocess, so the event loop keeps serving other users
while snippets run. Inside the sandbox the snippet sees:

- new user, pid, network, ipc, uts and cgroup namespaces (``--unshare-all --unshare-user``),
  with no way to make further user namespaces (``--disable-userns``): the network namespace has
  only a loopback device of its own, so a connect to the host's 127.0.0.1 is refused;
- read-only ``/usr`` (and ``/bin``, ``/lib``, ``/lib64``: symlinks into ``/usr`` on merged-usr
  Debian, read-only binds otherwise), a fresh ``/proc`` and a minimal ``/dev``, and a read-only
  root: nothing else of the host, no ``/etc``, no ``/home``, none of the app's files (should the
  repository lie under ``/usr``, an empty directory is mounted over it);
- two writable places: the temporary directory, bound at ``/sandbox`` (the working directory
  and ``HOME``), and a ``/tmp`` tmpfs of at most ``disk_mb``;
- an environment of its own (``--clearenv``: ``PATH``, ``HOME``, ``LANG``, ``TMPDIR``,
  ``PYTHONUNBUFFERED``); bwrap itself is started with that small environment too, so neither
  the snippet nor ``/proc/1/environ`` shows the app's secrets (``HF_TOKEN``, ``DATABASE_URL``);
- a new session (``--new-session``: no ``TIOCSTI`` into the app's terminal), killed when the app
  dies (``--die-with-parent``).

Limits (``RunLimits``), and what enforces each:

- wall time: the app kills bwrap at the deadline; bwrap's pid 1 in the sandbox dies with it
  (``--die-with-parent``) and the kernel then kills every process of the pid namespace;
- CPU time, memory, file size, processes: ``prlimit`` (util-linux, the ``prlimit(2)`` system
  call) sets ``RLIMIT_CPU``, ``RLIMIT_DATA``, ``RLIMIT_FSIZE`` (``memory_mb`` per file),
  ``RLIMIT_NPROC`` and ``RLIMIT_CORE`` (0) on itself inside the sandbox and execs the
  interpreter. ``RLIMIT_DATA`` rather than ``RLIMIT_AS``: measured here, node 20 needs about
  1 GiB of address space to start (it crashes under ``RLIMIT_AS`` of 512 MiB) but starts with
  64 MiB of ``RLIMIT_DATA``, which still stops a 10 GiB allocation at once (``MemoryError``);
- output: stdout and stderr are read as they come; past ``output_bytes`` (the two together) the
  sandbox is killed and the result says so.

Processes. ``RLIMIT_NPROC`` counts the tasks (processes and threads) of a user *per user
namespace* (since Linux 5.14, through ``ucounts``), so with a user namespace of its own each
sandbox has its own count: a fork bomb stops at ``processes`` (bwrap's pid 1 included) while
other sandboxes run on. Measured here: as root the limit does nothing, even inside a user
namespace (the kernel never applies ``RLIMIT_NPROC`` to the host's uid 0: 300 of 300 forks
succeeded), so when the app runs as root, bwrap is started as ``nobody`` (uid 65534); then 62
forks succeed and the 63rd fails with ``EAGAIN``, in each of three sandboxes at once. A cgroup's
``pids.max`` would work too (cgroup v1 is writable by root here) but needs root or a delegated
cgroup; this needs only unprivileged user namespaces, allowed by default on Debian.

Disk: ``/sandbox`` (the snippet's file bound read-only into it) and ``/tmp`` are each a tmpfs
of ``disk_mb``, in memory: a run writes nothing to the host's disk, and a write past the limit
fails with ``ENOSPC`` ("disk limit"). ``/dev/shm`` is read-only, so
Python's ``multiprocessing`` locks do not work inside. node needs ``memory_mb`` of 64 or more
(under 32 MiB of ``RLIMIT_DATA`` it hangs at start, and the run ends at its time limit).

A ``stopped`` reason a user understands, from what ended the run: the deadline ("time limit
(10 s)"), the output cap ("output limit (64 KiB)"), ``SIGXCPU`` ("CPU limit"), ``SIGXFSZ``
("file size limit (256 MiB)"), a full tmpfs on stderr ("disk limit (64 MiB)"), an
interpreter's own out-of-memory message on stderr ("memory limit (256 MiB)"), failed forks on
stderr ("too many processes"), another signal ("killed by signal N": bwrap reports a signal
as exit status 128 + N, as shells do).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from app.sizes import size_text

MIB = 1024 * 1024
NOBODY = 65534
WORKDIR = "/sandbox"
PYTHON = "/usr/bin/python3"
BASH = "/bin/bash"
# Only interpreters under these stay runnable inside the sandbox, which binds nothing else.
SYSTEM_DIRS = (Path("/usr"), Path("/bin"), Path("/lib"), Path("/lib64"))
REPOSITORY = Path(__file__).resolve().parents[2]
EXTENSIONS = {"python": ".py", "javascript": ".js", "bash": ".sh"}
SANDBOX_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": WORKDIR,
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "PYTHONUNBUFFERED": "1",  # output printed before a limit is hit is shown, not lost
}
# What interpreters print when an allocation fails (Python, node, bash and C++ programs).
MEMORY_SIGNS = (
    b"MemoryError", b"heap out of memory", b"Fatal process out of memory",
    b"cannot allocate", b"Cannot allocate memory", b"std::bad_alloc",
)
# What they print when a fork or a new thread fails for RLIMIT_NPROC (EAGAIN).
PROCESS_SIGNS = (
    b"BlockingIOError: [Errno 11]", b"can't start new thread",  # Python
    b"fork: retry", b"fork: Resource temporarily unavailable",  # bash
    b"spawn EAGAIN",  # node
)
# What Python prints past RLIMIT_FSIZE (it ignores SIGXFSZ; other programs die of it).
FILE_SIGNS = (b"File too large",)
# What they print when a write finds the run's tmpfs full (ENOSPC).
DISK_SIGNS = (b"No space left on device", b"ENOSPC")
READ_CHUNK = 65536
DRAIN_SECONDS = 2.0


class SandboxUnavailable(RuntimeError):
    """Raised when snippets cannot run on this machine: bubblewrap (or prlimit) is missing, or
    the kernel refuses the sandbox's namespaces. ``str(err)`` says what to install or enable."""


@dataclass(frozen=True)
class RunLimits:
    """What one run may use. ``output_bytes`` counts stdout and stderr together;
    ``memory_mb`` and ``disk_mb`` are in MiB."""

    wall_seconds: float = 10
    cpu_seconds: int = 10
    memory_mb: int = 256
    output_bytes: int = 64 * 1024
    processes: int = 64
    disk_mb: int = 64

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"RunLimits.{name} must be positive, not {value}")


@dataclass(frozen=True)
class RunResult:
    """What a run printed and how it ended. ``exit_code`` is None when the snippet did not
    exit by itself (killed at a limit or by a signal); ``stopped`` then says why."""

    stdout: str
    stderr: str
    exit_code: int | None
    seconds: float
    stopped: str | None
    truncated: bool


def _in_system_dirs(path: Path) -> bool:
    return any(path.is_relative_to(directory) for directory in SYSTEM_DIRS)


def _system_program(name: str) -> str | None:
    """The first ``name`` on PATH that lives in the system directories the sandbox binds,
    resolved (``/bin/node`` and ``/etc/alternatives`` links give the file under ``/usr``)."""
    for directory in os.get_exec_path():
        candidate = Path(directory, name)
        if os.access(candidate, os.X_OK) and candidate.is_file():
            real = candidate.resolve()
            if _in_system_dirs(real):
                return str(real)
    return None


def languages() -> dict[str, list[str]]:
    """The languages that can run here, each with its interpreter command (the snippet's file
    name is appended): Debian's python3 (not the app's virtualenv), node, bash. A node found
    on PATH outside ``/usr`` (nvm, /opt) does not count: the sandbox could not see it."""
    found: dict[str, list[str]] = {}
    if os.access(PYTHON, os.X_OK):
        found["python"] = [PYTHON]
    node = _system_program("node")
    if node is not None:
        found["javascript"] = [node]
    if os.access(BASH, os.X_OK):
        found["bash"] = [BASH]
    return found


def _root_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for path in SYSTEM_DIRS[1:]:
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    if _in_system_dirs(REPOSITORY):
        args += ["--tmpfs", str(REPOSITORY), "--remount-ro", str(REPOSITORY)]
    return args


def bwrap_command(
    bwrap: str, prlimit: str, workdir: Path, argv: list[str], limits: RunLimits
) -> list[str]:
    """The whole command line: bwrap's namespaces and mounts, then prlimit's limits, then
    the interpreter and the snippet's file (``argv``'s last, in ``workdir``)."""
    memory, disk = limits.memory_mb * MIB, limits.disk_mb * MIB
    script = argv[-1]
    env: list[str] = []
    for name, value in SANDBOX_ENV.items():
        env += ["--setenv", name, value]
    return [
        bwrap,
        "--unshare-all", "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session", "--hostname", "sandbox",
        *_root_binds(),
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(disk), "--tmpfs", "/tmp",
        "--size", str(disk), "--tmpfs", WORKDIR,
        "--ro-bind", str(workdir / script), f"{WORKDIR}/{script}",
        "--remount-ro", "/dev",
        "--remount-ro", "/",
        "--chdir", WORKDIR,
        "--clearenv", *env,
        "--",
        prlimit,
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
        f"--data={memory}",
        f"--fsize={memory}",
        f"--nproc={limits.processes}",
        "--core=0",
        "--",
        *argv,
    ]


def _tools() -> tuple[str, str]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "Snippets cannot run: bubblewrap is not installed. "
            "Install Debian's bubblewrap: sudo apt-get install bubblewrap"
        )
    prlimit = _system_program("prlimit")
    if prlimit is None:
        raise SandboxUnavailable(
            "Snippets cannot run: prlimit is missing. Install Debian's util-linux: "
            "sudo apt-get install util-linux"
        )
    return bwrap, prlimit


def _prepare(code: str, extension: str) -> Path:
    """A fresh directory holding the snippet, owned by the uid the sandbox runs as."""
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-run-"))
    script = workdir / f"snippet{extension}"
    script.write_text(code, encoding="utf-8")
    if os.geteuid() == 0:
        for path in (workdir, script):
            os.chown(path, NOBODY, NOBODY)
    return workdir


def _remove(workdir: Path) -> None:
    """Delete the run's directory, even where the snippet took the permissions away."""
    for directory, _, _ in os.walk(workdir):
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)
    shutil.rmtree(workdir, ignore_errors=True)


class _Output:
    """stdout and stderr as read so far, kept up to one cap shared by the two.

    The pipes are the app's own (``os.pipe``), not asyncio's ``PIPE``: on Python 3.11
    ``Process.wait()`` also waits for its pipes to close, and a pipe nobody reads any more
    (past the cap) would never be seen to close. Past the cap, reading goes on and throws the
    bytes away until the sandbox is gone.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.total = 0
        self.over = asyncio.Event()
        self.stdout = bytearray()
        self.stderr = bytearray()

    async def pump(self, stream: asyncio.StreamReader, into: bytearray) -> None:
        while chunk := await stream.read(READ_CHUNK):
            into += chunk[: max(self.cap - self.total, 0)]
            self.total += len(chunk)
            if self.total > self.cap:
                self.over.set()

    @property
    def truncated(self) -> bool:
        return self.total > self.cap


def _pipe() -> tuple[io.FileIO, int]:
    """A pipe: its read end as an unbuffered file (for asyncio), its write end's descriptor."""
    read_fd, write_fd = os.pipe()
    return io.FileIO(read_fd, "rb"), write_fd


async def _stream(pipe: io.FileIO) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
    )
    return reader, transport


def _task_count(bwrap_pid: int) -> int:
    """The processes and threads in the sandbox, as ``RLIMIT_NPROC`` counts them: every task
    under bwrap (which, outside the user namespace, is not counted itself)."""
    count, pending = 0, [bwrap_pid]
    while pending:
        pid = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:  # gone meanwhile
            continue
        count += len(tasks)
        for task in tasks:
            with contextlib.suppress(OSError, ValueError):
                children = Path(f"/proc/{pid}/task/{task}/children").read_text()
                pending += [int(child) for child in children.split()]
    return count - 1


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _ending(returncode: int, stderr: bytes, limits: RunLimits) -> tuple[int | None, str | None]:
    """The exit code and ``stopped`` reason of a run that ended by itself."""
    if returncode < 0:  # bwrap itself was killed, by someone other than us
        return None, f"killed by signal {-returncode}"
    signum = returncode - 128 if 128 < returncode < 128 + signal.NSIG else None
    exit_code = None if signum is not None else returncode
    if returncode != 0 and any(sign in stderr for sign in PROCESS_SIGNS):
        return exit_code, "too many processes"
    if returncode != 0 and any(sign in stderr for sign in MEMORY_SIGNS):
        return exit_code, f"memory limit ({size_text(limits.memory_mb * MIB)})"
    if signum == signal.SIGXCPU:
        return None, "CPU limit"
    if signum == signal.SIGXFSZ or (returncode != 0 and any(s in stderr for s in FILE_SIGNS)):
        return exit_code, f"file size limit ({size_text(limits.memory_mb * MIB)})"
    if returncode != 0 and any(sign in stderr for sign in DISK_SIGNS):
        return exit_code, f"disk limit ({size_text(limits.disk_mb * MIB)})"
    if signum is not None:
        return None, f"killed by signal {signum}"
    return exit_code, None


def _sandbox_failure(returncode: int, output: _Output) -> str | None:
    """bwrap's own message when it could not build the sandbox (before the snippet ran)."""
    if returncode == 1 and not output.stdout and output.stderr.startswith(b"bwrap: "):
        return output.stderr.decode("utf-8", errors="replace").strip()
    return None


async def run_snippet(code: str, language: str, limits: RunLimits = RunLimits()) -> RunResult:
    """Run ``code`` with ``language``'s interpreter in the sandbox and say how it went.

    Raises ``SandboxUnavailable`` when the sandbox cannot run here, and ``ValueError`` for a
    language that cannot run (the message lists those that can).
    """
    runnable = languages()
    if language not in runnable:
        can = ", ".join(sorted(runnable)) or "none"
        raise ValueError(f"{language!r} cannot run here; languages that can: {can}")
    bwrap, prlimit = _tools()
    workdir = await asyncio.to_thread(_prepare, code, EXTENSIONS[language])
    try:
        argv = [*runnable[language], f"snippet{EXTENSIONS[language]}"]
        return await _run(bwrap_command(bwrap, prlimit, workdir, argv, limits), limits)
    finally:
        await asyncio.to_thread(_remove, workdir)


async def _run(command: list[str], limits: RunLimits) -> RunResult:
    as_nobody = os.geteuid() == 0  # RLIMIT_NPROC never applies to root (see the docstring)
    (out_pipe, out_write), (err_pipe, err_write) = _pipe(), _pipe()
    pipes = [out_pipe, err_pipe]
    transports: list[asyncio.BaseTransport] = []
    process: asyncio.subprocess.Process | None = None
    try:
        try:
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                env={"PATH": SANDBOX_ENV["PATH"], "LANG": SANDBOX_ENV["LANG"]},
                start_new_session=True,
                user=NOBODY if as_nobody else None,
                group=NOBODY if as_nobody else None,
                extra_groups=[] if as_nobody else None,
            )
        finally:
            os.close(out_write)
            os.close(err_write)
        output = _Output(limits.output_bytes)
        pumps = []
        for pipe, into in zip(pipes, (output.stdout, output.stderr), strict=True):
            reader, transport = await _stream(pipe)
            transports.append(transport)
            pumps.append(asyncio.create_task(output.pump(reader, into)))
        exited = asyncio.create_task(process.wait())
        over = asyncio.create_task(output.over.wait())
        stopped: str | None = None
        try:
            await asyncio.wait(
                {exited, over}, timeout=limits.wall_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if not exited.done():
                full = _task_count(process.pid) >= limits.processes
                _kill(process)
                if over.done():
                    stopped = f"output limit ({size_text(limits.output_bytes)})"
                elif full:  # a fork bomb that swallows its errors
                    stopped = "too many processes"
                else:
                    stopped = f"time limit ({limits.wall_seconds:g} s)"
            returncode = await exited
            seconds = time.monotonic() - started
            # The writers are gone with the sandbox's pid namespace: collect what the pipes hold.
            await asyncio.wait(pumps, timeout=DRAIN_SECONDS)
        finally:
            for task in (*pumps, exited, over):
                task.cancel()
    finally:
        for transport in transports:
            transport.close()
        for pipe in pipes:
            pipe.close()
        if process is not None and process.returncode is None:  # cancelled: the app gave up
            _kill(process)
            await process.wait()
    if stopped is None and (failure := _sandbox_failure(returncode, output)):
        raise SandboxUnavailable(
            f"Snippets cannot run: bubblewrap could not build the sandbox ({failure}). "
            "It needs unprivileged user namespaces: sysctl user.max_user_namespaces above 0 "
            "(and kernel.unprivileged_userns_clone=1 where that exists)."
        )
    exit_code: int | None = None
    if stopped is None:
        exit_code, stopped = _ending(returncode, bytes(output.stderr), limits)
        if stopped is None and output.truncated:
            stopped = f"output limit ({size_text(limits.output_bytes)})"
    return RunResult(
        stdout=output.stdout.decode("utf-8", errors="replace"),
        stderr=output.stderr.decode("utf-8", errors="replace"),
        exit_code=exit_code,
        seconds=seconds,
        stopped=stopped,
        truncated=output.truncated,
    )
