"""The snippet sandbox against real escape attempts, through Debian's bubblewrap.

Each test runs a snippet the way the app does and checks what the user would see (the stopped
reason, the exit code, the output) and that the app's process and machine are unharmed: no
process of the sandbox is left, its temporary directory is gone, the test itself runs on.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.snippets import bwrap
from app.snippets.bwrap import SandboxUnavailable, bwrap_command, languages
from app.snippets.limits import RunLimits
from app.snippets.sandbox import RunResult, run_snippet

REPO = Path(__file__).resolve().parent.parent
SMALL = RunLimits(wall_seconds=2, cpu_seconds=2, memory_mb=64, output_bytes=64 * 1024,
                  disk_mb=128)


def _processes_marked(marker: bytes) -> list[str]:
    """Command lines of the live processes whose command line or environment holds ``marker``:
    bwrap (``--setenv``) and everything inside the sandbox."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in cmdline or marker in environ:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.fixture(autouse=True)
def leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After each test no process of its sandboxes runs on and no run directory is left.

    Its runs are told apart from other test runs on the machine by a variable set inside the
    sandbox and by a base directory of their own for the run directories."""
    marker = f"sandbox-test-{uuid.uuid4().hex}"
    monkeypatch.setitem(bwrap.SANDBOX_ENV, "TEST_RUN", marker)
    base = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    base.chmod(0o755)  # the sandbox may run as nobody, which must reach its directory
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    yield
    deadline = time.monotonic() + 3
    while (left := _processes_marked(marker.encode())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []
    assert list(base.iterdir()) == []
    base.rmdir()


async def run(code: str, language: str = "python", limits: RunLimits = SMALL) -> RunResult:
    return await run_snippet(code, language, limits)


def test_bubblewrap_is_installed() -> None:
    assert shutil.which("bwrap"), "scripts/test installs Debian's bubblewrap"


def test_languages_use_the_system_interpreters() -> None:
    found = languages()
    assert found["python"] == ["/usr/bin/python3"]
    assert found["bash"] == ["/bin/bash"]
    assert found["javascript"][0].startswith("/usr/"), "scripts/test installs Debian's nodejs"


async def test_a_normal_snippet_prints_and_exits_3() -> None:
    result = await run("import sys\nprint('hello from the sandbox')\nsys.exit(3)")
    assert result.stdout == "hello from the sandbox\n"
    assert result.stderr == ""
    assert result.exit_code == 3
    assert result.stopped is None
    assert not result.truncated
    assert result.seconds < 2


async def test_an_infinite_loop_stops_at_the_time_limit() -> None:
    result = await run("print('started')\nwhile True:\n    pass")
    assert result.stopped == "time limit (2 s)"
    assert result.exit_code is None
    assert result.stdout == "started\n"  # what it printed before is kept
    assert 2 <= result.seconds < 3


async def test_spinning_threads_stop_at_the_cpu_limit() -> None:
    code = (
        "import threading\n"
        "def spin():\n    while True:\n        pass\n"
        "for _ in range(2):\n    threading.Thread(target=spin).start()\n"
    )
    result = await run(code, limits=RunLimits(wall_seconds=5, cpu_seconds=1, memory_mb=64))
    assert result.stopped == "CPU limit"
    assert result.exit_code is None
    assert result.seconds < 4


async def test_allocating_10_gib_stops_at_the_memory_limit() -> None:
    result = await run("data = bytearray(10 * 2**30)\nprint('allocated')")
    assert result.stopped == "memory limit (64 MiB)"
    assert result.exit_code == 1
    assert "MemoryError" in result.stderr
    assert "allocated" not in result.stdout
    assert result.seconds < 2


async def test_growing_a_list_stops_at_the_memory_limit() -> None:
    result = await run("chunks = []\nwhile True:\n    chunks.append(bytearray(2**20))")
    assert result.stopped == "memory limit (64 MiB)"
    assert result.exit_code == 1
    assert result.seconds < 2


async def test_a_fork_bomb_stops_at_the_process_limit() -> None:
    started = time.monotonic()
    result = await run("import os\nwhile True:\n    os.fork()")
    assert result.stopped == "too many processes"
    assert result.exit_code == 1
    assert "Resource temporarily unavailable" in result.stderr
    assert time.monotonic() - started < 3
    # The machine keeps working: this process can still start others, and so can a sandbox.
    other = await asyncio.create_subprocess_exec("true")
    assert await other.wait() == 0
    again = await run("print('still fine')")
    assert (again.stdout, again.exit_code) == ("still fine\n", 0)


async def test_a_fork_bomb_that_hides_its_errors_is_still_named() -> None:
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = await run(code)
    assert result.stopped == "too many processes"
    assert result.exit_code is None
    assert result.seconds < 3


async def test_a_bash_fork_bomb_is_contained() -> None:
    # Each call waits for the two it starts, so the script lives until its forks fail. (The
    # classic `:(){ :|:& };:` then `wait` can end before the limit is reached: its shell returns
    # at once, and the pid namespace takes the bomb with it. It failed CI that way, no fork error.)
    result = await run(":(){ :|: & wait; };:\necho survived", "bash")
    assert "fork: retry: Resource temporarily unavailable" in result.stderr  # the limit held
    assert result.stopped == "too many processes"
    assert "survived" not in result.stdout
    assert result.seconds < 3


async def test_printing_100_mb_stops_at_the_output_limit() -> None:
    result = await run("line = 'x' * 99\nfor _ in range(1_000_000):\n    print(line)")
    assert result.stopped == "output limit (64 KiB)"
    assert result.truncated
    assert result.exit_code is None
    assert len(result.stdout) + len(result.stderr) <= 64 * 1024
    assert result.stdout.startswith("x" * 99 + "\n")
    assert result.seconds < 2


async def test_stdout_and_stderr_share_the_output_limit() -> None:
    code = (
        "import sys\n"
        "for _ in range(10_000):\n    print('o' * 10)\n    print('e' * 10, file=sys.stderr)"
    )
    result = await run(code, limits=RunLimits(output_bytes=1000))
    assert result.truncated
    assert result.stopped == "output limit (1000 B)"
    assert len(result.stdout) + len(result.stderr) == 1000


async def test_a_connect_to_the_hosts_loopback_is_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "except OSError as err:\n    print(type(err).__name__)\nelse:\n    print('connected')\n"
        )
        result = await run(code)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody came
    assert result.stdout == "ConnectionRefusedError\n"
    assert result.exit_code == 0


async def test_the_apps_environment_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_the_sandbox_test")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://app:secret@db/playground")
    code = (
        "import os\nprint(sorted(os.environ))\n"
        "for pid in ('self', '1'):\n    print(open(f'/proc/{pid}/environ').read())\n"
    )
    result = await run(code)
    assert result.exit_code == 0, result.stderr
    assert "hf_fake_token" not in result.stdout
    assert "secret" not in result.stdout
    first = result.stdout.splitlines()[0]
    # TEST_RUN: set by leaves_nothing_behind to find this test's processes.
    assert first == "['HOME', 'LANG', 'PATH', 'PWD', 'PYTHONUNBUFFERED', 'TEST_RUN', 'TMPDIR']"


async def test_the_repository_and_the_database_are_not_found(tmp_path: Path) -> None:
    database = tmp_path / "playground.db"
    database.write_text("conversations")
    paths = [REPO / "pyproject.toml", REPO / "volumes/data", database, Path("/etc/passwd"),
             Path("/root"), Path("/home")]
    code = (
        "import os\n"
        f"for path in {[str(path) for path in paths]!r}:\n"
        "    print(os.path.exists(path))\n"
        "print(sorted(os.listdir('/')))\n"
    )
    result = await run(code)
    assert result.exit_code == 0, result.stderr
    *exists, root = result.stdout.splitlines()
    assert exists == ["False"] * len(paths)
    assert root == "['bin', 'dev', 'lib', 'lib64', 'proc', 'sandbox', 'tmp', 'usr']"


async def test_writing_outside_the_run_directory_is_denied(tmp_path: Path) -> None:
    escaped = tmp_path / "escaped.txt"
    targets = ["/usr/escaped.txt", "/escaped.txt", "/dev/shm/escaped.txt", str(escaped)]
    code = (
        "import os\n"
        f"for path in {targets!r}:\n"
        "    try:\n        open(path, 'w').write('out')\n"
        "    except OSError as err:\n        print(type(err).__name__, err.strerror)\n"
        "    else:\n        print('wrote', path)\n"
        "open('here.txt', 'w').write('in')\nopen('/tmp/scratch.txt', 'w').write('in')\n"
        "print(sorted(os.listdir('.')), os.getcwd())\n"
    )
    result = await run(code)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "OSError Read-only file system",
        "OSError Read-only file system",
        "OSError Read-only file system",
        "FileNotFoundError No such file or directory",
        "['here.txt', 'snippet.py'] /sandbox",
    ]
    assert not escaped.exists()
    assert not Path("/usr/escaped.txt").exists()
    assert not Path("/escaped.txt").exists()


async def test_many_files_stop_at_the_disk_limit_and_the_host_disk_gains_nothing() -> None:
    """One snippet wrote 45 files of 60 MB (2.7 GB) to the host's disk within its 10 s."""
    code = (
        "for i in range(400):\n"
        "    with open(f'part{i}', 'wb') as f:\n        f.write(bytes(2**20))\n"
    )
    before = shutil.disk_usage(tempfile.gettempdir()).used
    result = await run(code, limits=RunLimits(wall_seconds=5, memory_mb=64, disk_mb=16))
    after = shutil.disk_usage(tempfile.gettempdir()).used
    assert result.stopped == "disk limit (16 MiB)", result.stderr
    assert "No space left on device" in result.stderr
    assert after - before < 64 * 2**20, "400 MB were asked for; the host's disk got none"


async def test_a_huge_file_stops_at_the_file_size_limit() -> None:
    code = "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(bytes(2**20))"
    result = await run(code)
    assert result.stopped == "file size limit (64 MiB)"
    assert result.exit_code == 1
    assert "File too large" in result.stderr


async def test_a_javascript_snippet_runs() -> None:
    assert "javascript" in languages(), "scripts/test installs Debian's nodejs"
    code = "console.log('sum', [1, 2, 3].reduce((a, b) => a + b));\nprocess.exit(4);"
    result = await run(code, "javascript", RunLimits(wall_seconds=5))
    assert (result.stdout, result.exit_code, result.stopped) == ("sum 6\n", 4, None)


async def test_javascript_out_of_memory_is_named() -> None:
    code = "const kept = [];\nfor (;;) kept.push(new Array(1e6).fill(1.5));"
    result = await run(code, "javascript", RunLimits(wall_seconds=5, memory_mb=128))
    assert result.stopped == "memory limit (128 MiB)"
    assert result.exit_code is None  # node aborts (SIGABRT)


async def test_a_bash_snippet_runs() -> None:
    code = 'echo "in $PWD as $(id -u)"; echo oops >&2; ls /; exit 5'
    result = await run(code, "bash")
    assert result.exit_code == 5
    assert result.stopped is None
    uid = 65534 if os.geteuid() == 0 else os.getuid()  # root runs snippets as nobody
    assert result.stdout.splitlines()[0] == f"in /sandbox as {uid}"
    assert result.stderr == "oops\n"


async def test_snippets_run_in_parallel_without_blocking_the_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    results = await asyncio.gather(
        *(run(f"import time\ntime.sleep(1)\nprint({n})") for n in range(4)),
        run("while True:\n    pass", limits=RunLimits(wall_seconds=1)),
        run("sleep 1; echo bash", "bash"),
    )
    elapsed = time.monotonic() - started
    ticking.cancel()
    assert [r.stdout for r in results[:4]] == ["0\n", "1\n", "2\n", "3\n"]
    assert results[4].stopped == "time limit (1 s)"
    assert results[5].stdout == "bash\n"
    assert elapsed < 1.9  # together, not one after another (6 s)
    assert ticks >= 0.6 * elapsed / 0.05


async def test_a_language_that_cannot_run_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'cobol' cannot run here; languages that can: bash, "):
        await run("DISPLAY 'HI'.", "cobol")


async def test_without_bubblewrap_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    with pytest.raises(SandboxUnavailable, match="Install Debian's bubblewrap"):
        await run("print(1)")


async def test_a_sandbox_bwrap_cannot_build_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bwrap, "_root_binds", lambda: ["--ro-bind", "/nonexistent", "/usr"])
    with pytest.raises(SandboxUnavailable, match="bwrap: Can't find source path /nonexistent"):
        await run("print(1)")


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"RunLimits\.memory_mb must be positive, not 0"):
        RunLimits(memory_mb=0)


def test_the_command_binds_nothing_of_the_app(tmp_path: Path) -> None:
    command = bwrap_command("/usr/bin/bwrap", "/usr/bin/prlimit", tmp_path,
                            ["/bin/sh", "snippet.sh"], SMALL)
    binds = [command[i + 1] for i, arg in enumerate(command) if arg in ("--bind", "--ro-bind")]
    assert binds == ["/usr", str(tmp_path / "snippet.sh")]
    isolation = {"--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"}
    assert isolation | {"--clearenv"} <= set(command)
    assert not any(str(REPO) in arg for arg in command)


async def test_an_app_installed_under_usr_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bwrap, "REPOSITORY", Path("/usr/share/doc"))
    code = "import os\nprint(os.listdir('/usr/share/doc'), os.path.exists('/usr/bin/python3'))"
    result = await run(code)
    assert (result.stdout, result.exit_code) == ("[] True\n", 0)
