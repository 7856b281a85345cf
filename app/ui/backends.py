"""The Backends panel and the model menu: each backend as the background checks last found it,
refreshed while the panel is unfolded, and a "Check now" that probes them all."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from app.chat import ChatService
from app.chat.guard import RateWindow
from app.ui.render import model_choices, status_markdown
from app.ui.users import PageUsers

# How often the page re-reads the backend status panel (the app probes the backends in the
# background; reading the panel costs nothing).
STATUS_REFRESH_SECONDS = 5.0
# "Check now" probes every backend: a user may do it this often a minute.
CHECKS_PER_MINUTE = 6


class BackendsPanel:
    def __init__(
        self, service: ChatService,
        users: PageUsers,
    ) -> None:
        self.service = service
        self.users = users
        self._checks = RateWindow(CHECKS_PER_MINUTE, 60.0)

    def model_menu(self, value: str | None = None) -> Any:
        choices = model_choices(self.service.models())
        if value is None and choices:
            value = self.service.settings.default_model or choices[0][1]
        return gr.update(choices=choices, value=value)

    def status_panel(self) -> str:
        return status_markdown(self.service.statuses())

    async def check_backends(
        self, request: gr.Request | None, model: str | None
    ) -> tuple[str, Any]:
        """Probe every backend now (a signed-in user, at most CHECKS_PER_MINUTE times a
        minute); the panel and the model menu show the result."""
        mine = await self.users.conversations(request)
        wait = self._checks.wait(mine.user_id)
        if wait > 0:
            raise gr.Error(f"The backends were checked {CHECKS_PER_MINUTE} times in the last "
                           f"minute; try again in {math.ceil(wait)} s. The panel refreshes "
                           "by itself meanwhile.")
        self._checks.add(mine.user_id)
        await self.service.router.refresh(force=True)
        return self.status_panel(), self.model_menu(model or None)

    def panel(self) -> tuple[gr.Markdown, gr.Button]:
        """The folded panel, refreshing itself while unfolded; its table and its "Check now"
        button (which the page wires with the model menu)."""
        with gr.Accordion("Backends", open=False, elem_id="backends-panel") as panel:
            backends = gr.Markdown(self.status_panel(), elem_id="backends")
            check = gr.Button("Check now", size="sm", elem_id="check-backends")
        # The panel refreshes only while it is unfolded: 2,000 idle pages polling every
        # 5 s would be 400 requests a second.
        timer = gr.Timer(STATUS_REFRESH_SECONDS, active=False)
        timer.tick(self.status_panel, None, [backends], queue=False, api_visibility="private")
        panel.expand(lambda: (gr.Timer(active=True), self.status_panel()), None,
                     [timer, backends], queue=False, api_visibility="private")
        panel.collapse(lambda: gr.Timer(active=False), None, [timer], queue=False,
                       api_visibility="private")
        return backends, check
