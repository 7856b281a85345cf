"""The floor of the streaming benchmark: the least a Python proxy does between a browser and
the server, to tell how far the app's cost per token is from what a proxy cannot avoid.

    python -m bench.floor --port 7871 --backend http://127.0.0.1:8080

``POST /v1/chat/completions`` opens the same request to ``--backend`` with the app's client
library for streams (aiohttp, one session with its connections kept, as
``app.backends.client`` reads them) and writes what the server sends on to the client as it
comes, unparsed, over uvicorn as the app is served: no queue, no state, no page, no store. Its
clients read it as they read the server itself.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def floor_app(backend: str) -> Starlette:
    sessions: list[aiohttp.ClientSession] = []

    async def relay(request: Request) -> Response:
        if not sessions:  # on the server's event loop, once
            sessions.append(aiohttp.ClientSession(
                backend, connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None),
            ))
        response = await sessions[0].post("/v1/chat/completions", data=await request.body(),
                                          headers={"content-type": "application/json"})

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await response.content.readany():
                    yield chunk
            finally:
                response.release()

        return StreamingResponse(chunks(), status_code=response.status,
                                 media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    return Starlette(routes=[Route("/v1/chat/completions", relay, methods=["POST"]),
                             Route("/health", health)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="root URL of the server, without /v1")
    args = parser.parse_args(argv)
    uvicorn.run(floor_app(args.backend.rstrip("/")), host="127.0.0.1", port=args.port,
                log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
