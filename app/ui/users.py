"""Who is asking, on the page: the user signed in (a password account, or a Hugging Face
sign-in), or the local user with ``AUTH_MODE=none``; and that user's conversations, the way
every part of the page reaches them (``PageUsers.conversations``)."""

from __future__ import annotations

import asyncio
from typing import Any

import gradio as gr

from app.chat.cache import Lru
from app.chat.conversations import Conversations
from app.settings import Settings
from app.store import Store
from app.store.store import LOCAL_USER
from app.ui.gradio_compat import oauth_username

USER_IDS_KEPT = 10_000

SIGN_IN_FIRST = "Sign in with Hugging Face first (the button at the top of the page)."

# Conversations of Hugging Face users are stored under this prefix, so that they can never be
# those of a password account of the same name (account names have no colon).
HF_USER_PREFIX = "hf:"


class PageUsers:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.auth_mode = settings.auth_mode
        self.store = store
        # Names to ids of the users seen lately (not of every user ever seen).
        self._user_ids = Lru[str, int](USER_IDS_KEPT)

    def signed_out(self, request: gr.Request | None) -> bool:
        """True before a Hugging Face sign-in (``AUTH_MODE=hf``), when the page has no user."""
        return self.auth_mode == "hf" and oauth_username(request) is None

    def signed_in_only(self, load: Any) -> Any:
        """A page-load handler that does nothing, rather than fail, before a Hugging Face
        sign-in."""

        async def run(request: gr.Request | None, *args: Any) -> Any:
            if self.signed_out(request):
                return gr.skip()
            return await load(request, *args)

        return run

    async def conversations(self, request: gr.Request | None) -> Conversations:
        """The signed-in user's conversations; with AUTH_MODE=none, the local user's. Raises
        ``gr.Error`` for a page with nobody signed in."""
        if self.auth_mode == "none":
            name = LOCAL_USER
        elif self.auth_mode == "hf":
            username = oauth_username(request)
            if username is None:
                raise gr.Error(SIGN_IN_FIRST)
            name = HF_USER_PREFIX + username
        elif request is None or not request.username:
            raise gr.Error("Sign in first.")
        else:
            name = request.username
        user_id = self._user_ids.get(name)
        if user_id is None:
            user_id = await asyncio.to_thread(self.store.user_id, name)
            self._user_ids.put(name, user_id)
        return Conversations(self.store, user_id)
