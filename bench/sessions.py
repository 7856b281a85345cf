"""What an opened page costs the app in memory: Gradio keeps every page's session (a copy of
the page's configuration, its state) until ``state_session_capacity`` pages (10,000 by
default) have been opened after it, even once the browser tab is closed.

    python -m bench.sessions           # 1,000 pages, one message each, in steps of 250;
                                       # writes bench/results/sessions.json
    python -m bench.sessions --quick   # 40 pages in steps of 20

Each page is opened as a browser opens it (its load events) and sends one short message.
Reported: the app's resident memory after each step, and the growth per page.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cli, procs
from bench.client import GradioTarget, find_endpoint, gradio_stream, open_page


async def run(pages: int, step: int, folder: Path, app_path: Path) -> dict[str, Any]:
    with procs.standin(folder, rate=200.0, tokens=20) as standin:
        app = procs.app(folder / "app", standin.url, app_path).start()
        try:
            target = GradioTarget(app.url, await find_endpoint(app.url))
            await gradio_stream(target, session=await open_page(target))  # warm-up
            steps = [(0, procs.rss_bytes(app.pid))]
            errors = 0
            for opened in range(step, pages + 1, step):
                for _ in range(0, step, 25):
                    sessions = await asyncio.gather(*(open_page(target) for _ in range(25)))
                    results = await asyncio.gather(*(
                        gradio_stream(target, session=session) for session in sessions))
                    errors += sum(1 for r in results if r.error is not None)
                steps.append((opened, procs.rss_bytes(app.pid)))
        finally:
            app.stop()
    per_page = (steps[-1][1] - steps[1][1]) / (steps[-1][0] - steps[1][0]) if len(steps) > 2 \
        else (steps[-1][1] - steps[0][1]) / max(steps[-1][0], 1)
    return {
        "pages": pages, "errors": errors,
        "rss_mib_by_pages": [(n, round(rss / 2**20, 1)) for n, rss in steps],
        "mib_per_page": round(per_page / 2**20, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = cli.parser("sessions", __doc__, "40 pages", "sessions.json").parse_args(argv)
    pages, step = (40, 20) if args.quick else (1000, 250)
    output = cli.output_folder(args)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-sessions-") as folder:
        results = asyncio.run(run(pages, step, Path(folder), args.app_path.resolve()))
    print(json.dumps(results))
    if output is not None:
        cli.write_json(output, "sessions.json", cli.report(
            "sessions", args, started, results=results))
    return 0 if results["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
