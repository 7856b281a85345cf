"""The endpoints of code that checks itself (``app.chat.checks``, the page's own): a code
block of a reply run in the sandbox, a reply checked against tests and repaired, whole or as
server-sent events, and its check read back.

A reply is named by its message id; one that is not the caller's is 404, the same as one that
does not exist. Refusals (``CheckRefused``: runs off, a language the sandbox does not run, a
block past the last, no Python code, tests that hold no test, the rounds, the message rate,
the running replies, the sandbox busy) answer with their own status, mapped in
``app.api.errors``. A check runs while its request is open: a client that goes away stops it,
and the versions tried so far stay with the reply.
"""

from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from app.api.dialogue import ON_REQUEST, SSE, Dialogues, check_out, streamed_responses
from app.api.errors import ApiError
from app.api.errors import error_responses as _errors
from app.api.models import CheckIn, CheckOut, MessagePath, RunIn, RunOut
from app.chat.checks import CheckProgress, CheckRefused, Checks
from app.chat.conversations import NotFound, StoreError
from app.events import event, event_stream
from app.snippets.extract import extract_blocks


@contextmanager
def reply_of_yours(message_id: int) -> Iterator[None]:
    """A block that reads or changes the reply ``message_id``: one that is not the user's, or
    not there, answers 404."""
    try:
        yield
    except NotFound as err:
        raise ApiError(404, f"No reply {message_id} among yours.") from err


def add_check_routes(router: APIRouter, user: Any, dialogues: Dialogues, checks: Checks) -> None:
    """Add the run and check endpoints to ``router``; ``user`` is its type of a signed-in
    user's id (an ``Annotated`` dependency)."""

    @router.post(
        "/messages/{message_id}/run", response_model=RunOut,
        responses=_errors(401, 403, 404, 422, 503), summary="Run a code block of a reply",
    )
    async def run(user_id: user, message_id: MessagePath, body: RunIn) -> RunOut:
        """Run the reply's code block `block` (0 for the first) in the sandbox, and keep the
        run with the reply (GET /messages lists it). 403 where runs are off (SNIPPET_RUNS),
        404 for a block past the reply's last, 422 for a language the sandbox does not run,
        503 with Retry-After while it runs as many as it takes (SNIPPET_RUNS_AT_ONCE)."""
        mine = dialogues.of(user_id)
        with reply_of_yours(message_id):
            result = await checks.run_block(mine, message_id, body.block)
            _, _, reply = await mine.exchange_of(message_id)
        language = extract_blocks(reply.content)[body.block].language
        return RunOut(block=body.block, language=language, **asdict(result))

    @router.post(
        "/messages/{message_id}/check", response_model=CheckOut,
        responses=streamed_responses(ON_REQUEST, 401, 403, 404, 422, 429, 503),
        summary="Check a reply against tests, and repair it",
    )
    async def check(
        user_id: user, message_id: MessagePath, body: CheckIn, request: Request
    ) -> Any:
        """Run the reply's Python code against tests (yours, else a test file attached to
        the message, else the reply's own, else tests the model writes) and, while some
        fail, have the model repair it, each repair a new version of the reply, now on
        screen. Answers the check as it ended, or as server-sent events while it runs.
        Refusals come before any event: 403 where runs are off, 422 for a reply without
        Python code, tests that hold no test or rounds over CHECK_ROUNDS, 429 or 503 (with
        Retry-After) over the message rate or the running replies. One later on (a repair
        round over the rate, the backend failing) answers its status, or ends the events
        with its `error`; the versions tried so far are kept."""
        progress = checks.check(dialogues.of(user_id), message_id, body.tests, body.repair,
                                body.rounds)
        with reply_of_yours(message_id):
            first = await anext(progress)
        if body.stream or SSE in request.headers.get("accept", ""):
            return event_stream(_events(first, progress))
        last = first
        with reply_of_yours(message_id):
            async with aclosing(progress):
                async for step in progress:
                    last = step
        return check_out(last.trace)

    @router.get(
        "/messages/{message_id}/check", response_model=CheckOut,
        responses=_errors(401, 404, 422), summary="The check of a reply",
    )
    async def read_check(user_id: user, message_id: MessagePath) -> CheckOut:
        """The check the reply is a version of, as it stands (each version of a checked reply
        holds the same); 404 when it was not checked."""
        with reply_of_yours(message_id):
            _, _, reply = await dialogues.of(user_id).exchange_of(message_id)
        if reply.check is None:
            raise ApiError(404, f"Reply {message_id} has not been checked.")
        return CheckOut.model_validate(reply.check)


async def _events(
    first: CheckProgress, rest: AsyncGenerator[CheckProgress]
) -> AsyncIterator[bytes]:
    """A check as server-sent events: ``{"check"}`` after each step, ``{"answer",
    "round"}`` for each piece of the model's answer, then ``{"done": true, "check",
    "error"}``; a refusal or a store failure on the way ends them with its sentence."""
    trace, answered = first.trace, 0
    try:
        async with aclosing(rest):
            async for progress in _chained(first, rest):
                trace = progress.trace
                if progress.answer:
                    yield event({"answer": progress.answer[answered:],
                                 "round": len(trace["versions"])})
                    answered = len(progress.answer)
                    continue
                answered = 0
                yield event({"done": True, "check": trace, "error": None} if progress.done
                            else {"check": trace})
    except (CheckRefused, StoreError) as err:
        yield event({"done": True, "check": trace, "error": str(err)})


async def _chained(
    first: CheckProgress, rest: AsyncIterator[CheckProgress]
) -> AsyncIterator[CheckProgress]:
    yield first
    async for progress in rest:
        yield progress
