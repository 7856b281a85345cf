"""The sidebar's "Export and import" fold: one conversation as JSON or Markdown, or all of them
as JSON, to download; a JSON export imported back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import gradio as gr

from app.chat import Chat
from app.chat.conversations import AttachmentLimits, TransferError
from app.ui.downloads import Downloads
from app.ui.users import PageUsers


class TransferUI:
    def __init__(
        self, users: PageUsers,
        downloads: Downloads, limits: AttachmentLimits,
    ) -> None:
        self.users = users
        self.downloads = downloads
        self.limits = limits

    async def export_json(self, request: gr.Request | None, chat: Chat) -> str:
        return await self.export(request, chat, "json")

    async def export_markdown(self, request: gr.Request | None, chat: Chat) -> str:
        return await self.export(request, chat, "markdown")

    async def export_all(self, request: gr.Request | None, chat: Chat) -> str:
        return await self.export(request, chat, "all")

    async def export(self, request: gr.Request | None, chat: Chat, which: str) -> str:
        """A file to download: this conversation (JSON or Markdown) or all of them (JSON)."""
        if which != "all" and chat.id is None:
            raise gr.Error("This conversation is empty; there is nothing to export yet.")
        conversation_id = None if which == "all" else chat.id
        mine = await self.users.conversations(request)
        name, text = await mine.export(conversation_id, markdown=which == "markdown")
        return str(await asyncio.to_thread(self.downloads.write, name, text))

    async def import_file(self, request: gr.Request | None, path: str, chat: Chat) -> Any:
        mine = await self.users.conversations(request)
        try:
            added = await mine.import_file(Path(path), self.limits)
        except TransferError as err:
            raise gr.Error(f"Nothing was imported: {err}") from err
        gr.Info(f"Imported {len(added)} conversation(s).")
        return gr.update(choices=await mine.choices(), value=chat.id)

    # -- layout --------------------------------------------------------------------------

    def controls(self, chat: gr.State, conversations: gr.Radio) -> None:
        """The fold's buttons and their events; an import updates ``conversations``."""
        exports = {
            "json": gr.Button("This one as JSON", size="sm", elem_id="export-json"),
            "markdown": gr.Button("This one as Markdown", size="sm", elem_id="export-markdown"),
            "all": gr.Button("All as JSON", size="sm", elem_id="export-all"),
        }
        exported = gr.File(label="Download", interactive=False, elem_id="exported")
        upload = gr.UploadButton(
            "Import JSON", file_types=[".json"], size="sm", elem_id="import"
        )
        handlers = {
            "json": self.export_json, "markdown": self.export_markdown,
            "all": self.export_all,
        }
        for which, button in exports.items():
            button.click(handlers[which], [chat], [exported], api_name=f"export_{which}")
        upload.upload(
            self.import_file, [upload, chat], [conversations], api_name="import_file"
        )
