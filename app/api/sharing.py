"""The share endpoints: make a read-only link to one of your conversations, list your links,
revoke one. Sharing off (ALLOW_SHARING=false) answers 403 on each."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from app.api.dialogue import Dialogues, yours
from app.api.errors import ApiError
from app.api.errors import error_responses as _errors
from app.api.models import DialoguePath, ShareOut
from app.chat.conversations import NotFound
from app.settings import Settings
from app.share_page import share_url
from app.store.shares import ShareSummary

SHARING_OFF = "Sharing is off on this server (ALLOW_SHARING=false)."


def add_share_routes(
    router: APIRouter, user: Any, settings: Settings, dialogues: Dialogues
) -> None:
    """Add the share endpoints to ``router``; ``user`` is its type of a signed-in user's id
    (an ``Annotated`` dependency)."""

    def sharing_on() -> None:
        if not settings.allow_sharing:
            raise ApiError(403, SHARING_OFF)

    def share_out(share: ShareSummary, request: Request) -> ShareOut:
        return ShareOut(
            id=share.id, token=share.token, url=share_url(str(request.base_url), share.token),
            title=share.title, dialogue_id=share.conversation_id, created_at=share.created_at,
        )

    @router.post(
        "/dialogues/{dialogue_id}/share", status_code=201, response_model=ShareOut,
        responses=_errors(401, 403, 404, 422), summary="Share one of your conversations",
    )
    async def share(
        user_id: user, request: Request,
        dialogue_id: DialoguePath,
    ) -> ShareOut:
        """A read-only snapshot of the conversation as it stands, at a random link that
        anyone holding it can read without signing in, until you revoke it. It holds the
        title and the exchanges (messages and latest replies), nothing else of yours."""
        sharing_on()
        with yours(dialogue_id):
            made = await dialogues.of(user_id).share(dialogue_id)
        return share_out(made, request)

    @router.get(
        "/shares", response_model=list[ShareOut], responses=_errors(401, 403),
        summary="Your shared links, newest first",
    )
    async def list_shares(user_id: user, request: Request) -> list[ShareOut]:
        sharing_on()
        found = await dialogues.of(user_id).shares()
        return [share_out(s, request) for s in found]

    @router.delete(
        "/shares/{share_id}", status_code=204, response_class=Response,
        responses=_errors(401, 403, 404), summary="Revoke one of your shared links",
    )
    async def revoke_share(user_id: user, share_id: Annotated[int, Path(ge=1)]) -> Response:
        """Its link answers 404 from now on."""
        sharing_on()
        try:
            await dialogues.of(user_id).revoke_share(share_id)
        except NotFound as err:
            raise ApiError(404, f"No share {share_id} among yours.") from err
        return Response(status_code=204)
