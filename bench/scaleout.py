"""The scale-out stack without Docker: containers/nginx.conf in front of two app replicas that
share one PostgreSQL database, and two stand-ins as the TGI replicas behind the same nginx;
users stream through nginx's one port, as browsers would.

    python -m bench.scaleout           # 32 users; writes bench/results/scaleout.json
    python -m bench.scaleout --quick   # 16 users, short replies: checks the harness

Needs Debian's ``nginx`` and ``postgresql`` (``apt-get install nginx-light postgresql``).
The nginx configuration is the shipped one with only its addresses changed (the replicas'
host names become loopback ports) and the lines a non-container run needs (pid file, logs).
The schema is created first with the command the ``migrate`` service of compose.scale.yaml
runs. Checked: no errors; each app replica and each TGI replica served some of the streams;
every message is in the shared database; and, for contrast, that without the route cookie
(no sticky session) Gradio's queue loses the pages that land on the other replica.

Then the load (``loads``): N users pressing Send at once, through one replica alone (its own
port, no nginx) and through nginx to both, the two taking turns (``repeats`` each, since runs
on a shared machine move by a third). Each wave gives the aggregate (all tokens over the span
from the first request to the last token, also as a share of N streams at the stand-in's
pace), the first token's median and 90th percentile, and the CPU a token of each replica
(its CPU over the wave, over the tokens of the replies it finished), of nginx and of
PostgreSQL, all in this one run on one database.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import cli, procs
from bench.client import (
    ClientError,
    GradioTarget,
    StreamResult,
    find_endpoint,
    get_json,
    gradio_stream,
)
from bench.client import open_page as open_page_
from tests.postgres import PostgresServer
from tests.servers import free_port

MIGRATE = ("from app.server import open_store; from app.settings import load_settings; "
           "open_store(load_settings())")


@dataclass(frozen=True)
class Parameters:
    users: int
    tokens: int
    rate: float
    loads: tuple[int, ...]  # N users at once in the load waves
    repeats: int  # waves of each way, alternated, per N


FULL = Parameters(users=32, tokens=200, rate=50.0, loads=(64, 128), repeats=2)
# nginx sends each new page to a replica picked at random: of 6 pages all went to one replica
# in one run in about 32 (the test failed on it); of 16, one in about 32,000.
QUICK = Parameters(users=16, tokens=20, rate=50.0, loads=(16,), repeats=1)


def render_conf(name: str, folder: Path, listen: int, servers: dict[str, list[int]]) -> str:
    """containers/``name`` with loopback addresses (``servers``: the host:port written there,
    and the loopback ports it stands for), and its files in ``folder``."""
    conf = (procs.REPO / "containers" / name).read_text()
    for written, ports in servers.items():
        line = re.search(rf"server {re.escape(written)}(?P<rest>[^;]*);", conf)
        if line is None:
            raise RuntimeError(f"no server {written} in {name}")
        conf = conf.replace(line.group(0), " ".join(
            f"server 127.0.0.1:{port}{line.group('rest')};" for port in ports))
    conf = re.sub(r"listen \d+;", f"listen 127.0.0.1:{listen};", conf)
    left = re.findall(r"server (?!127\.0\.0\.1)[\w.-]+:\d+", conf)
    if left:
        raise RuntimeError(f"host names left in {name}: {left}")
    main = [f"pid {folder / 'nginx.pid'};", f"error_log {folder / 'error.log'} warn;",
            "daemon off;"]
    if os.geteuid() == 0:
        main.append("user root;")
    conf = conf.replace("http {", f"http {{\n    access_log {folder / 'access.log'};", 1)
    return "\n".join(main) + "\n" + conf


class Nginx:
    def __init__(self, conf: str, folder: Path, port: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, port
        self.path = folder / "nginx.conf"
        self.path.write_text(conf)
        self.process: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        done = subprocess.run([nginx_binary(), "-t", "-p", str(self.folder), "-c", str(self.path)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{done.stderr}")

    def __enter__(self) -> Nginx:
        self.check()
        self.process = subprocess.Popen(
            [nginx_binary(), "-p", str(self.folder), "-c", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: procs.die_with_parent(signal.SIGTERM),  # nginx's own shutdown
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/nginx-health").status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("nginx did not start: " + (self.folder / "error.log").read_text())

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        raise RuntimeError("nginx is not installed: apt-get install nginx-light")
    return found


def replies_served(url: str) -> int:
    """Replies an app replica has finished, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return int(sum(float(value) for value in re.findall(
        r"^playground_replies_total\{[^}]*\} ([0-9.e+]+)$", text, flags=re.MULTILINE)))


async def wave(target: GradioTarget, users: int, label: str) -> list[StreamResult]:
    sessions = await asyncio.gather(*(open_page_(target) for _ in range(users)))
    return list(await asyncio.gather(*(
        gradio_stream(target, f"Write a function (user {i}, {label})", session)
        for i, session in enumerate(sessions)
    )))


async def run(p: Parameters, folder: Path, app_path: Path) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with PostgresServer() as postgres:
        database = postgres.create_database("playground")
        standins = [procs.standin(folder / f"tgi-{name}", p.rate, p.tokens).start()
                    for name in "ab"]
        app_ports = [free_port(), free_port()]
        door, pool = free_port(), free_port()
        apps: list[procs.Child] = []
        try:
            # The order of compose.scale.yaml: the TGI pool, the schema, the replicas, the door.
            pool_conf = render_conf("nginx-tgi.conf", folder / "pool", pool, {
                "tgi-a:80": [standins[0].port], "tgi-b:80": [standins[1].port]})
            with Nginx(pool_conf, folder / "pool", pool):
                env = procs.base_env(app_path) | {"DATABASE_URL": database}
                await asyncio.to_thread(
                    subprocess.run, [sys.executable, "-c", MIGRATE], env=env, cwd=folder,
                    check=True, capture_output=True, timeout=120,
                )
                for index, port in enumerate(app_ports):
                    apps.append(procs.app(folder / f"app-{index}", f"http://127.0.0.1:{pool}",
                                          app_path, database_url=database, port=port).start())
                door_conf = render_conf("nginx.conf", folder / "door", door,
                                        {"app:7860": app_ports})
                with Nginx(door_conf, folder / "door", door):
                    url = f"http://127.0.0.1:{door}"
                    endpoint = await find_endpoint(url)
                    sticky = GradioTarget(url, endpoint, cookies=True)
                    begin = time.perf_counter()
                    results = await wave(sticky, p.users, "sticky")
                    seconds = time.perf_counter() - begin
                    loose = GradioTarget(url, endpoint, cookies=False)
                    without = await asyncio.gather(*(
                        _attempt(loose, i, p.tokens) for i in range(min(p.users, 8))
                    ))
                    served = [replies_served(app.url) for app in apps]
                    streams = [(await get_json(s.url, "/stats"))["started"] for s in standins]
                    one = GradioTarget(apps[0].url, await find_endpoint(apps[0].url))
                    ways = {"one replica": (one, [apps[0]]), "two replicas": (sticky, apps)}
                    report["load"] = [
                        await loaded(ways, way, users, p, postgres.pid(), door_pid(folder))
                        for users in p.loads for _ in range(p.repeats) for way in ways
                    ]
            with psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://")
                                 ) as connection:
                stored = connection.execute(
                    "SELECT count(*) FROM messages WHERE role = 'user' AND content LIKE %s",
                    ("%, sticky)",)).fetchone()
        finally:
            for app in apps:
                app.stop()
            for standin in standins:
                standin.stop()
    errors = [r.error or f"{r.tokens} tokens" for r in results
              if r.error is not None or r.tokens != p.tokens]
    report.update({
        "users": p.users,
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:3],
        "seconds": round(seconds, 2),
        "replies_per_app_replica": served,
        "streams_per_tgi_replica": streams,
        "messages_stored": int(stored[0]) if stored else 0,
        "without_the_route_cookie": {
            "pages": len(without), "failed": sum(1 for ok in without if not ok),
        },
    })
    report["passed"] = (report["errors"] == 0 and all(served) and all(streams)
                        and report["messages_stored"] == p.users)
    return report


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and of the processes it started (nginx's workers, PostgreSQL's
    backends): those that still run, and those that ended (counted in its own ``/proc`` stat
    once it has waited for them)."""
    return procs.cpu_seconds(pid, ended_children=True) + sum(
        procs.cpu_seconds(child) for child in procs.children(pid))


def door_pid(folder: Path) -> int:
    return int((folder / "door" / "nginx.pid").read_text())


async def loaded(
    ways: dict[str, tuple[GradioTarget, list[procs.Child]]], way: str, users: int,
    p: Parameters, postgres_pid: int, nginx_pid: int,
) -> dict[str, Any]:
    """One wave of ``users`` pressing Send at once, the way ``way`` says."""
    target, replicas = ways[way]
    sessions = await asyncio.gather(*(open_page_(target) for _ in range(users)))
    cpu = [procs.cpu_seconds(app.pid) for app in replicas]
    served = [replies_served(app.url) for app in replicas]
    others = [tree_cpu(nginx_pid), tree_cpu(postgres_pid)]
    results = list(await asyncio.gather(*(
        gradio_stream(target, f"Write a function (user {i}, {way})", session)
        for i, session in enumerate(sessions)
    )))
    # A reply is counted once stored, a moment after its last token reached the browser.
    deadline = time.monotonic() + 10
    while True:
        finished = [replies_served(app.url) - before
                    for app, before in zip(replicas, served, strict=True)]
        if sum(finished) >= users or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    cpu = [procs.cpu_seconds(app.pid) - before for app, before in zip(replicas, cpu, strict=True)]
    tokens = [p.tokens * count for count in finished]
    nginx, database = (tree_cpu(pid) - before
                       for pid, before in zip((nginx_pid, postgres_pid), others, strict=True))
    span = max((r.last_token or r.ended) for r in results) - min(r.started for r in results)
    received = sum(r.tokens for r in results)
    ttfts = sorted(1000 * r.ttft for r in results if r.ttft is not None)
    return {
        "way": way, "users": users,
        "errors": sum(1 for r in results if r.error is not None or r.tokens != p.tokens),
        "aggregate_tokens_per_second": round(received / span, 1),
        "of_the_pace": round(received / span / (users * p.rate), 3),
        "ttft_ms_median": round(statistics.median(ttfts), 1) if ttfts else None,
        "ttft_ms_p90": round(ttfts[int(0.9 * (len(ttfts) - 1))], 1) if ttfts else None,
        "replica_cpu_ms_per_token": [round(1000 * c / t, 3) if t else None
                                     for c, t in zip(cpu, tokens, strict=True)],
        "replica_cpu_percent": [round(100 * c / span, 1) for c in cpu],
        "nginx_cpu_ms_per_token": round(1000 * nginx / received, 3) if received else None,
        "postgres_cpu_ms_per_token": round(1000 * database / received, 3) if received else None,
    }


async def _attempt(target: GradioTarget, index: int, expected: int) -> bool:
    """One page and one message without cookies: True when it streamed to its end (within
    half a minute)."""
    try:
        async with asyncio.timeout(30):
            session = await open_page_(target)
            result = await gradio_stream(target, f"Write a function (user {index}, no cookie)",
                                         session)
    except (ClientError, OSError, ValueError, KeyError):
        return False
    return result.error is None and result.tokens == expected


def main(argv: list[str] | None = None) -> int:
    args = cli.parser("scaleout", __doc__, "16 users, short replies",
                      "scaleout.json").parse_args(argv)
    p = QUICK if args.quick else FULL
    output = cli.output_folder(args)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as folder:
        results = asyncio.run(run(p, Path(folder), args.app_path.resolve()))
    results["nginx"] = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True,
                                      check=False).stderr.strip()
    print(json.dumps(results, indent=2))
    if output is not None:
        cli.write_json(output, "scaleout.json", cli.report(
            "scaleout", args, started, parameters=asdict(p), results=results))
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
