"""The preview panels: HTML, SVG and Mermaid code shown live in a sandboxed frame (app/preview.py
serves it), beside the chat for a code block of a reply, and in the Snippets tab for the
version of a snippet on screen. Each panel has Reload, Open in new tab and Close.

In the chat, ``preview.js`` (given to the page by ``app.ui.page.page_script``) adds a Preview
button to each such code block of the replies as they stream in; a click hands the block's
language and code to the hidden ``chat_request`` event, which stores them and opens the panel.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

import gradio as gr

from app.preview import PATH, Preview, Previews, PreviewTooLarge, preview_kind
from app.ui.users import PageUsers

NOT_PREVIEWABLE = "Only HTML, SVG and Mermaid code can be previewed."
FRAME_HEIGHT = 480


def frame_html(preview: Preview) -> str:
    """The sandboxed frame showing ``preview``, and its link to open it in a new tab (both
    relative to the page, so that they hold under a root path)."""
    url = escape(f"{PATH.lstrip('/')}/{preview.id}")
    return (
        f'<iframe sandbox="allow-scripts" src="{url}" title="Preview of the {preview.kind} code" '
        f'referrerpolicy="no-referrer" style="width: 100%; height: {FRAME_HEIGHT}px; '
        'border: 1px solid #d1d9e0; border-radius: 6px; background: #fff;"></iframe>'
        f'<p><a href="{url}" target="_blank" rel="noopener noreferrer" class="preview-open">'
        "Open in new tab</a></p>"
    )


@dataclass(frozen=True)
class PreviewPanel:
    """A panel's column (hidden until a preview) and its frame."""

    column: gr.Column
    frame: gr.HTML

    @property
    def outputs(self) -> list[Any]:
        return [self.column, self.frame]


class PreviewUI:
    def __init__(
        self, previews: Previews, users: PageUsers
    ) -> None:
        self.previews = previews
        self.users = users

    async def show(self, request: gr.Request | None, language: str, code: str) -> tuple[Any, str]:
        """Keep ``code`` as a preview of the signed-in user's and show it in the panel."""
        kind = preview_kind(language or "", code or "")
        if kind is None:
            raise gr.Error(NOT_PREVIEWABLE)
        mine = await self.users.conversations(request)
        try:
            preview = self.previews.add(mine.user_id, kind, code)
        except PreviewTooLarge as err:
            raise gr.Error(str(err)) from err
        return gr.update(visible=True), frame_html(preview)

    # -- layout --------------------------------------------------------------------------

    @staticmethod
    def panel(name: str) -> PreviewPanel:
        """A hidden preview panel whose elements' ids start with ``name``, with its Reload
        and Close events."""
        with gr.Column(visible=False, scale=2, min_width=320, elem_id=name) as column:
            frame = gr.HTML(elem_id=f"{name}-frame", js_on_load=None)
            with gr.Row():
                reload = gr.Button("Reload", size="sm", min_width=80, elem_id=f"{name}-reload")
                close = gr.Button("Close", size="sm", min_width=80, elem_id=f"{name}-close")
        reload.click(None, None, None, js=(
            f"() => {{ const f = document.querySelector('#{name}-frame iframe'); "
            "if (f) f.src = f.getAttribute('src'); }"
        ))
        close.click(lambda: gr.update(visible=False), None, [column], queue=False,
                    api_visibility="private")
        return PreviewPanel(column, frame)

    def chat_request(self, panel: PreviewPanel) -> None:
        """The hidden event behind the chat's Preview buttons (``preview.js`` fills it)."""
        language = gr.Textbox(visible="hidden", elem_id="preview-language")
        code = gr.Textbox(visible="hidden", elem_id="preview-code")
        ask = gr.Button(visible="hidden", elem_id="preview-ask")
        ask.click(
            self.show, [language, code], panel.outputs, api_name="preview",
            js="() => { const asked = window.playgroundPreview || {}; "
               "return [asked.language || '', asked.code || '']; }",
        )
