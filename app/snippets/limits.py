"""What a snippet's run may use, what enforces each limit, and how a run's ending is worded.

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

import signal
from dataclasses import dataclass

from app.sizes import size_text

MIB = 1024 * 1024
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


def output_limit(limits: RunLimits) -> str:
    """The ``stopped`` reason of a run that printed more than ``output_bytes``."""
    return f"output limit ({size_text(limits.output_bytes)})"


def killed_at(limits: RunLimits, *, output_over: bool, processes_full: bool) -> str:
    """The ``stopped`` reason of a run the app killed: its output went past the cap, or it
    filled its processes (a fork bomb that swallows its errors), or else its time was up."""
    if output_over:
        return output_limit(limits)
    if processes_full:
        return "too many processes"
    return f"time limit ({limits.wall_seconds:g} s)"


def ending(returncode: int, stderr: bytes, limits: RunLimits) -> tuple[int | None, str | None]:
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
