"""Run a user's code snippet in a bubblewrap sandbox, with limits, without blocking the app.

``run_snippet`` writes the snippet into a fresh temporary directory and starts Debian's
``bwrap`` (bubblewrap) as an asyncio subprocess, so the event loop keeps serving other users
while snippets run; it reads the run's output as it comes and kills the sandbox at a limit.
What the snippet sees inside is in ``app.snippets.bwrap`` (the command line); its limits, what
enforces each and how a run's end is worded, in ``app.snippets.limits``.
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

from app.snippets.bwrap import SANDBOX_ENV, SandboxUnavailable, bwrap_command, languages, tools
from app.snippets.limits import RunLimits, ending, killed_at, output_limit

NOBODY = 65534
EXTENSIONS = {"python": ".py", "javascript": ".js", "bash": ".sh"}
READ_CHUNK = 65536
DRAIN_SECONDS = 2.0


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
    bwrap, prlimit = tools()
    workdir = await asyncio.to_thread(_prepare, code, EXTENSIONS[language])
    try:
        argv = [*runnable[language], f"snippet{EXTENSIONS[language]}"]
        return await _run(bwrap_command(bwrap, prlimit, workdir, argv, limits), limits)
    finally:
        await asyncio.to_thread(_remove, workdir)


async def _run(command: list[str], limits: RunLimits) -> RunResult:
    as_nobody = os.geteuid() == 0  # RLIMIT_NPROC never applies to root (app.snippets.limits)
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
                stopped = killed_at(limits, output_over=over.done(), processes_full=full)
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
        exit_code, stopped = ending(returncode, bytes(output.stderr), limits)
        if stopped is None and output.truncated:
            stopped = output_limit(limits)
    return RunResult(
        stdout=output.stdout.decode("utf-8", errors="replace"),
        stderr=output.stderr.decode("utf-8", errors="replace"),
        exit_code=exit_code,
        seconds=seconds,
        stopped=stopped,
        truncated=output.truncated,
    )
