"""Files attached to a message on the page. The "Attach files" box (a picker that also takes
files dropped on it) is an input of Send; ``files_in`` reads what it holds for the turn, which
checks them (``app.chat.attachments``). The message shows each file as a chip
(``render.attachment_chips``), a link to ``#attachment-<message id>-<index>``: a script
catches its click and presses a hidden button, whose handler (``AttachmentsUI.open``) shows
the file in a viewer. It reads the file from the tab's own conversation, so a tab opens only
files of conversations its user could open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app.chat import Chat
from app.settings import Settings
from app.sizes import size_text
from app.ui.render import ATTACHMENT_LINK
from app.ui.scripts import call

# The fence languages whose names the code viewer does not share.
VIEWER_LANGUAGES = {"bash": "shell", "sh": "shell", "md": "markdown", "yml": "yaml"}


def files_in(paths: list[str] | None, max_bytes: int) -> list[tuple[str, bytes]]:
    """The files the Attach box holds (Gradio's copies, under their own names), each with
    at most ``max_bytes + 1`` of its bytes: enough to tell that a file is over the limit
    without reading all of a big one."""
    files = []
    for path in paths or []:
        with open(path, "rb") as file:
            files.append((Path(path).name, file.read(max_bytes + 1)))
    return files


class AttachmentsUI:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def box(self) -> gr.File:
        """The Attach box, under the message box."""
        limits = (f"Up to {self.settings.attachments_per_message} text or code files of "
                  f"{size_text(self.settings.attachment_max_bytes)} each")
        return gr.File(
            label=f"Attach files ({limits})", file_count="multiple", type="filepath",
            height=120, elem_id="attach",
        )

    def read(self, paths: list[str] | None) -> list[tuple[str, bytes]]:
        return files_in(paths, self.settings.attachment_max_bytes)

    async def open(self, target: str, chat: Chat) -> Any:
        """The viewer showing the file ``target`` ("<message id>-<index>") of the
        conversation on screen."""
        message_id, _, index = target.partition("-")
        found = next(
            (e for e in chat.exchanges if str(e.user_message_id) == message_id), None
        )
        if found is None or not index.isdigit() or int(index) >= len(found.attachments):
            raise gr.Error("That file is no longer in this conversation; open it again.")
        attachment = found.attachments[int(index)]
        language = VIEWER_LANGUAGES.get(attachment.language, attachment.language)
        return gr.update(
            value=attachment.text, label=f"{attachment.name} ({size_text(attachment.size)})",
            language=language if language in gr.Code.languages else None, visible=True,
        )

    def viewer(self, page: gr.Blocks, chat: gr.State) -> None:
        """The viewer a chip opens, the hidden box and button its link presses, and the
        script that does it."""
        shown = gr.Code(visible=False, interactive=False, buttons=["copy", "download"],
                        max_lines=30, elem_id="attachment-viewer")
        target = gr.Textbox(visible="hidden", elem_id="attachment-target")
        opened = gr.Button(visible="hidden", elem_id="attachment-open")
        opened.click(self.open, [target, chat], [shown], queue=False, api_visibility="private")
        page.load(None, js=call(
            "link_presses.js", ATTACHMENT_LINK, "attachment-target", "attachment-open"))
