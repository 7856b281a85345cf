"""The sandbox's command line: Debian's ``bwrap`` (bubblewrap), then ``prlimit``, then the
interpreter; and which interpreters can run inside.

Inside the sandbox the snippet sees:

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

The limits that ``prlimit`` sets are described in ``app.snippets.limits``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from app.snippets.limits import MIB, RunLimits

WORKDIR = "/sandbox"
PYTHON = "/usr/bin/python3"
BASH = "/bin/bash"
# Only interpreters under these stay runnable inside the sandbox, which binds nothing else.
SYSTEM_DIRS = (Path("/usr"), Path("/bin"), Path("/lib"), Path("/lib64"))
REPOSITORY = Path(__file__).resolve().parents[2]
SANDBOX_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": WORKDIR,
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "PYTHONUNBUFFERED": "1",  # output printed before a limit is hit is shown, not lost
}


class SandboxUnavailable(RuntimeError):
    """Raised when snippets cannot run on this machine: bubblewrap (or prlimit) is missing, or
    the kernel refuses the sandbox's namespaces. ``str(err)`` says what to install or enable."""


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


def tools() -> tuple[str, str]:
    """The paths of ``bwrap`` and ``prlimit``; ``SandboxUnavailable`` says what to install
    when one is missing."""
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
