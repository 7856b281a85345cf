"""Sharing in the sidebar: share the conversation on screen as a read-only link, see your links
and revoke them, and import a link someone shared as a new conversation of yours. The page
builds it only with ALLOW_SHARING on."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.chat import Chat
from app.chat.conversations import Conversations, NotFound
from app.share_page import share_url, token_from
from app.ui.gradio_compat import page_root_url
from app.ui.users import PageUsers

NOTHING_TO_SHARE = "This conversation is empty; send a first message, then share it."
NO_SUCH_LINK = "No shared conversation at that link: check it, or it may have been revoked."


class SharingUI:
    def __init__(
        self, users: PageUsers
    ) -> None:
        self.users = users

    @staticmethod
    async def _listed(mine: Conversations, chosen: int | None = None) -> Any:
        found = await mine.shares()
        choices = [(f"{s.title} ({s.created_at:%Y-%m-%d %H:%M} UTC)", s.id) for s in found]
        return gr.update(choices=choices, value=chosen)

    async def listed(self, request: gr.Request | None) -> Any:
        """The user's shared links, newest first."""
        return await self._listed(await self.users.conversations(request))

    async def share(self, request: gr.Request, chat: Chat) -> tuple[str, Any]:
        """A new link to the conversation on screen as it stands, shown to copy."""
        if chat.id is None:
            raise gr.Error(NOTHING_TO_SHARE)
        mine = await self.users.conversations(request)
        try:
            made = await mine.share(chat.id)
        except NotFound as err:
            raise gr.Error("That conversation no longer exists.") from err
        link = share_url(page_root_url(request), made.token)
        return link, await self._listed(mine, made.id)

    async def show(self, request: gr.Request, share_id: int | None) -> str:
        """The link of the share picked in the list."""
        found = await (await self.users.conversations(request)).shares()
        token = next((s.token for s in found if s.id == share_id), None)
        if token is None:
            raise gr.Error("That link was revoked.")
        return share_url(page_root_url(request), token)

    async def revoke(self, request: gr.Request | None, share_id: int | None) -> tuple[str, Any]:
        """Revoke the share picked in the list: its link stops working at once."""
        if share_id is None:
            raise gr.Error("Pick one of your shared links first.")
        mine = await self.users.conversations(request)
        try:
            await mine.revoke_share(share_id)
        except NotFound as err:
            raise gr.Error("That link was revoked already.") from err
        gr.Info("Revoked: the link no longer works.")
        return "", await self._listed(mine)

    async def import_link(self, request: gr.Request | None, link: str) -> tuple[Any, str]:
        """A new conversation of the user's from a shared link (or its token alone)."""
        if not link.strip():
            raise gr.Error("Paste a shared link first.")
        mine = await self.users.conversations(request)
        try:
            await mine.import_share(token_from(link))
        except NotFound as err:
            raise gr.Error(NO_SUCH_LINK) from err
        gr.Info("Imported: the conversation is now in your list.")
        return gr.update(choices=await mine.choices()), ""

    # -- layout --------------------------------------------------------------------------

    def import_box(self, conversations: gr.Radio) -> None:
        """The textbox and button that import a shared link, with their events; inside the
        sidebar's "Export and import" fold, whose ``conversations`` list they update."""
        link = gr.Textbox(
            label="Import a shared link", placeholder="https://…/share/…",
            elem_id="import-link",
        )
        add = gr.Button("Import the link", size="sm", elem_id="import-share")
        gr.on([link.submit, add.click], self.import_link, [link], [conversations, link],
              api_name="import_share")

    def panel(
        self, page: gr.Blocks, chat: gr.State) -> None:
        """The sidebar's "Share" fold and its events (no links listed before a Hugging Face
        sign-in)."""
        with gr.Accordion("Share", open=False, elem_id="share-panel"):
            gr.Markdown(
                "A read-only copy of the conversation as it is now, at a secret link that "
                "anyone who has it can open without signing in, until you revoke it."
            )
            share = gr.Button("Share this conversation", size="sm", elem_id="share")
            link = gr.Textbox(
                label="Link", interactive=False, buttons=["copy"], elem_id="share-link"
            )
            mine = gr.Radio([], label="Your shared links", elem_id="shares")
            revoke = gr.Button("Revoke", size="sm", variant="stop", elem_id="revoke-share")
        share.click(self.share, [chat], [link, mine], api_name="share")
        mine.input(self.show, [mine], [link], api_name="show_share")
        revoke.click(self.revoke, [mine], [link, mine], api_name="revoke_share")
        page.load(self.users.signed_in_only(self.listed), None, [mine], api_visibility="private")
