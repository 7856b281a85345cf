"""The endpoints under ``/api/v1`` and who may call them.

With ``AUTH_MODE=none`` every request is the local user and no token is needed (sign-up and
login answer 403). With ``AUTH_MODE=password`` every endpoint but ``/signup`` and ``/login``
needs ``Authorization: Bearer <token>``; a missing, unknown, expired or malformed token gets
the same 401. With ``AUTH_MODE=hf`` (a Space) people sign in on the page with Hugging Face and
the API is closed: every endpoint is 401, even with a token made in password mode before a
restart (sign-up and login 403). A dialogue of another user is 404, the same as one that
does not exist.
"""

import asyncio
from datetime import timedelta
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import StreamingResponse

from app.api.checks import add_check_routes
from app.api.compare import Comparing, add_compare_routes
from app.api.dialogue import ON_REQUEST, SSE, Dialogues, streamed_responses
from app.api.errors import ApiError
from app.api.errors import error_responses as _errors
from app.api.models import (
    MAX_ID_CHARS,
    Credentials,
    DialogueIn,
    DialogueOut,
    DialoguePath,
    DialogueSummary,
    MessagesOut,
    ModelOut,
    TokenListed,
    TokenOut,
    TreeOut,
    UserOut,
)
from app.api.sharing import add_share_routes
from app.backends import BackendError
from app.chat import ChatService
from app.chat.checks import Checks
from app.chat.guard import Guard
from app.events import event_stream
from app.logins import LoginLocked, LoginThrottle
from app.settings import Settings
from app.store import AccountError, Accounts, NameTaken, NotFound, Store, StoredExchange
from app.store.accounts import token_hash

PREFIX = "/api/v1"
UNAUTHORIZED = (
    "A valid token is needed: log in with POST /api/v1/login and send it as "
    "'Authorization: Bearer <token>'."
)
ACCOUNTS_OFF = (
    "Accounts are off (AUTH_MODE=none): every request is the local user, no token needed."
)
# A token is a password-mode account's: with Hugging Face sign-in nothing makes one, and one
# made before a restart in hf mode opens nothing.
HF_MODE = (
    "This app signs people in with Hugging Face (AUTH_MODE=hf), on the page only: the REST "
    "API takes no token here, not even one made while the app ran with AUTH_MODE=password. "
    "Run the app with AUTH_MODE=password to use the API."
)
SIGNUP_CLOSED = (
    "Sign-up is closed on this server (ALLOW_SIGNUP=false); ask its operator for an account."
)
WRONG_LOGIN = "Wrong name or password."


class RestApi:
    def __init__(
        self, settings: Settings, service: ChatService, store: Store, guard: Guard,
        accounts: Accounts | None = None, checks: Checks | None = None,
        logins: LoginThrottle | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.accounts = accounts or Accounts(store)
        self.dialogues = Dialogues(settings, service, store, guard)
        self.checks = checks or Checks(service, self.dialogues.turns)
        self.comparing = Comparing(settings, service, self.dialogues)
        self.local_user = store.user_id() if settings.auth_mode == "none" else None
        self.logins = logins or LoginThrottle(store)
        self.bearer = HTTPBearer(
            auto_error=False, scheme_name="token",
            description="A token from POST /api/v1/login (AUTH_MODE=password only).",
        )

    # -- who is asking -------------------------------------------------------------------

    def _unauthorized(self) -> ApiError:
        return ApiError(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})

    async def user(self, credentials: HTTPAuthorizationCredentials | None) -> int:
        """The caller's user id; raises 401 without a valid token (password mode), and for
        every request in hf mode."""
        if self.local_user is not None:
            return self.local_user
        if self.settings.auth_mode == "hf":
            raise ApiError(401, HF_MODE)
        if credentials is None:
            raise self._unauthorized()
        user_id = await asyncio.to_thread(self.accounts.user_for_token, credentials.credentials)
        if user_id is None:
            raise self._unauthorized()
        return user_id

    def _accounts_on(self) -> None:
        if self.settings.auth_mode != "password":
            raise ApiError(403, HF_MODE if self.settings.auth_mode == "hf" else ACCOUNTS_OFF)

    # -- the router ----------------------------------------------------------------------

    def router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX, tags=["v1"])
        Token = Annotated[HTTPAuthorizationCredentials | None, Depends(self.bearer)]

        async def current_user(credentials: Token) -> int:
            return await self.user(credentials)

        # Routes taking a User need a token in password mode (and say so in the docs).
        User = Annotated[int, Depends(current_user)]

        @router.post(
            "/signup", status_code=201, response_model=UserOut,
            responses=_errors(400, 403, 409, 422), summary="Create an account",
        )
        async def signup(body: Credentials) -> UserOut:
            """Only with AUTH_MODE=password and ALLOW_SIGNUP=true; 403 otherwise. 409 when
            the name is taken, 422 when the name or password breaks the rules."""
            self._accounts_on()
            if not self.settings.allow_signup:
                raise ApiError(403, SIGNUP_CLOSED)
            try:
                user_id = await asyncio.to_thread(self.accounts.signup, body.name, body.password)
            except NameTaken as err:
                raise ApiError(409, str(err)) from err
            except AccountError as err:
                raise ApiError(422, str(err)) from err
            return UserOut(id=user_id, name=body.name)

        @router.post(
            "/login", response_model=TokenOut, responses=_errors(400, 401, 403, 422, 429),
            summary="Get a bearer token",
        )
        async def login(body: Credentials, request: Request) -> TokenOut:
            """Trade a name and password for a token valid TOKEN_TTL_HOURS (403 with
            AUTH_MODE=none, where no token is needed). After 5 failed logins for a name, or
            20 from one address, within 15 minutes (the page's login form counts too): 429
            with Retry-After."""
            self._accounts_on()
            address = request.client.host if request.client else "unknown"
            try:
                user_id = await self.logins.attempt(body.name, address, partial(
                    self.accounts.check_password, body.name, body.password))
            except LoginLocked as err:
                raise ApiError(
                    429, str(err), headers={"Retry-After": str(err.seconds)}
                ) from err
            if user_id is None:
                raise ApiError(401, WRONG_LOGIN, headers={"WWW-Authenticate": "Bearer"})
            ttl = timedelta(hours=self.settings.token_ttl_hours)
            token = await asyncio.to_thread(self.accounts.issue_token, user_id, ttl)
            info = await asyncio.to_thread(self.accounts.token_info, token)
            assert info is not None, "a token just issued is valid"
            return TokenOut(token=token, expires_at=info.expires_at)

        @router.post(
            "/logout", status_code=204, response_class=Response,
            responses=_errors(401, 403), summary="Revoke this token",
        )
        async def logout(user_id: User, credentials: Token) -> Response:
            """The token of this request stops working (403 with AUTH_MODE=none)."""
            self._accounts_on()
            assert credentials is not None, "a user in password mode came with a token"
            await asyncio.to_thread(self.accounts.revoke, credentials.credentials)
            return Response(status_code=204)

        @router.get(
            "/tokens", response_model=list[TokenListed], responses=_errors(401, 403),
            summary="Your tokens still valid",
        )
        async def tokens(user_id: User, credentials: Token) -> list[TokenListed]:
            """Every token of yours that still works, newest first; never the tokens
            themselves, which are shown once, when issued."""
            self._accounts_on()
            assert credentials is not None, "a user in password mode came with a token"
            mine = token_hash(credentials.credentials)
            found = await asyncio.to_thread(self.accounts.tokens, user_id)
            return [TokenListed(id=t.id, created_at=t.created_at, expires_at=t.expires_at,
                                current=t.token_hash == mine) for t in found]

        @router.delete(
            "/tokens/{token_id}", status_code=204, response_class=Response,
            responses=_errors(401, 403, 404), summary="Revoke one of your tokens",
        )
        async def revoke(user_id: User, token_id: Annotated[int, Path(ge=1)]) -> Response:
            self._accounts_on()
            if not await asyncio.to_thread(self.accounts.revoke_id, user_id, token_id):
                raise ApiError(404, f"No token {token_id} among yours.")
            return Response(status_code=204)

        @router.get(
            "/me", response_model=UserOut, responses=_errors(401),
            summary="Who the token belongs to",
        )
        async def me(user_id: User) -> UserOut:
            try:
                name = await asyncio.to_thread(self.accounts.name, user_id)
            except NotFound as err:  # the account was removed while the token was valid
                raise self._unauthorized() from err
            return UserOut(id=user_id, name=name)

        @router.get(
            "/models", response_model=ModelOut, responses=_errors(401, 503),
            dependencies=[Depends(current_user)], summary="The models on offer",
        )
        async def models() -> ModelOut:
            """The default model and every model the backends offer, as the app's background
            checks last found them (every BACKEND_CHECK_INTERVAL seconds); 503 with the
            reason when no backend answers."""
            try:
                info = await self.service.backend_info()
            except BackendError as err:
                if self.settings.debug:
                    raise
                raise ApiError(503, str(err)) from err
            return ModelOut(
                model=info.model_id, backend=info.kind, backend_name=info.name,
                models=self.service.models(), max_input_tokens=info.max_input_tokens,
                max_total_tokens=info.max_total_tokens, version=info.version,
                controls=sorted(info.controls),
            )

        @router.post(
            "/dialogue", response_model=DialogueOut,
            responses=streamed_responses(ON_REQUEST, 400, 401, 404, 422, 429, 503),
            summary="Send a message and get the reply",
        )
        async def dialogue(body: DialogueIn, request: Request, user_id: User) -> Any:
            """Start a conversation, or continue one of yours with `dialogue_id`. The
            message is stored first, then the reply as it streams, with its stats."""
            turn = await self.dialogues.start(user_id, body)
            stop_if_gone = self.dialogues.stopped_by(body, request)
            if body.stream or SSE in request.headers.get("accept", ""):
                return event_stream(
                    self.dialogues.events(turn.live, stop_if_gone=stop_if_gone)
                )
            return await self.dialogues.reply(turn, stop_if_gone)

        @router.get(
            "/dialogues/{dialogue_id}/stream", responses=streamed_responses(
                "`data: {json}` events, as `POST /dialogue` with stream=true sends them.",
                401, 404, 409, 422),
            response_class=StreamingResponse, summary="Follow the reply being written",
        )
        async def follow(
            user_id: User,
            dialogue_id: DialoguePath,
            offset: Annotated[int, Query(
                ge=0, description="Send the reply's text from this character on (what a "
                "client already has, to pick up where it was cut off).",
            )] = 0,
        ) -> StreamingResponse:
            """The reply of the conversation, as server-sent events: the text so far (from
            `offset`), then each new piece as it is written, then its end. A reply that has
            already ended comes whole, at once. Going away does not stop it. Of a comparison's
            two replies, the one on screen (its right side): POST /compare streams both."""
            found = await self.dialogues.follow(user_id, dialogue_id)
            if isinstance(found, StoredExchange):
                return event_stream(self.dialogues.stored_events(dialogue_id, found, offset))
            return event_stream(self.dialogues.events(found, offset))

        @router.post(
            "/dialogues/{dialogue_id}/stop", status_code=204, response_class=Response,
            responses=_errors(401, 404, 422), summary="Stop the reply being written",
        )
        async def stop(
            user_id: User,
            dialogue_id: DialoguePath,
        ) -> Response:
            """Stop the conversation's reply (a comparison's two), for every page and client
            following it; it is stored as stopped, with its text so far, before this answers.
            Nothing happens when none is running."""
            if not await self.dialogues.stop(user_id, dialogue_id):
                await self.dialogues.follow(user_id, dialogue_id)  # 404 if not the user's
            return Response(status_code=204)

        @router.get(
            "/dialogues", response_model=list[DialogueSummary], responses=_errors(401, 422),
            summary="Your conversations, newest first",
        )
        async def dialogues(
            user_id: User,
            search: Annotated[str, Query(
                max_length=200, description="Only those whose title or messages hold this "
                "text (ignoring case).",
            )] = "",
            limit: Annotated[int, Query(ge=1, le=200, description="At most this many.")] = 50,
        ) -> list[DialogueSummary]:
            return await self.dialogues.listed(user_id, search, limit)

        @router.get(
            "/messages", response_model=MessagesOut | TreeOut,
            responses=_errors(401, 404, 422), summary="The messages of one conversation",
        )
        async def messages(
            user_id: User,
            dialogue_id: Annotated[str, Query(
                max_length=MAX_ID_CHARS, description="One of your conversations."
            )],
            view: Annotated[Literal["branch", "tree"], Query(
                description="`branch`: the exchanges of the branch on screen (the one a new "
                "message continues); `tree`: every message of every branch, with its parent."
            )] = "branch",
        ) -> MessagesOut | TreeOut:
            """The branch on screen, each user message with its reply, oldest first; or
            with `view=tree`, every message of every branch (edits and retries) with its
            parent, and the last message of the branch on screen."""
            return await self.dialogues.messages(user_id, dialogue_id, tree=view == "tree")

        @router.delete(
            "/dialogues/{dialogue_id}", status_code=204, response_class=Response,
            responses=_errors(401, 404, 422), summary="Delete one of your conversations",
        )
        async def delete_dialogue(
            user_id: User,
            dialogue_id: DialoguePath,
        ) -> Response:
            await self.dialogues.delete(user_id, dialogue_id)
            return Response(status_code=204)

        add_share_routes(router, User, self.settings, self.dialogues)
        add_check_routes(router, User, self.dialogues, self.checks)
        add_compare_routes(router, User, self.comparing)

        @router.api_route(
            "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            include_in_schema=False,
        )
        async def unknown(path: str, request: Request) -> None:
            raise ApiError(
                404, f"No endpoint {request.method} {PREFIX}/{path}; see /api/docs."
            )

        return router
