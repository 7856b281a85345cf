"""The peer the app is compared with: Gradio's own ``gr.load_chat`` on an OpenAI-compatible
server, the simplest thing a user could pick instead of this app.

    python -m bench.peer --port 7870 --backend http://127.0.0.1:8080 --concurrency 256

It is given the same room as the app: ``concurrency`` events at once (Gradio's default is one
per event, which would serialize every user) and as many worker threads (``gr.load_chat``
streams from a sync generator, which Gradio runs in its thread pool, 40 threads by default).
Its ``chat`` endpoint is the one ``gradio_client`` calls (the browser's page runs a chain of
three events instead, the last of which streams to the Chatbot): one queued event that streams
the reply into a JSON output, without postprocessing, so a little lighter than the page. It
needs the ``openai`` package (the ``test`` extra installs it).
"""

from __future__ import annotations

import argparse
import sys

import gradio as gr

from bench.standin import MODEL_ID


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peer", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="root URL of the server, without /v1")
    parser.add_argument("--concurrency", type=int, default=256,
                        help="events run at once, and worker threads")
    args = parser.parse_args(argv)
    demo = gr.load_chat(
        f"{args.backend.rstrip('/')}/v1", model=MODEL_ID, token="none", file_types=None,
        concurrency_limit=args.concurrency, api_name="chat",
    )
    demo.queue(default_concurrency_limit=args.concurrency)
    demo.launch(
        server_name="127.0.0.1", server_port=args.port, max_threads=args.concurrency,
        show_error=False, quiet=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
