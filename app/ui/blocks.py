"""The StarChat-style page: its parts built and wired. The chat tab's handlers are in
``app.ui.chat``; the other tabs and folds each have a module of their own."""

from __future__ import annotations

import gradio as gr

from app.chat import Chat, ChatService
from app.chat.checks import Checks
from app.chat.compare import Comparer
from app.chat.conversations import AttachmentLimits
from app.chat.guard import Guard
from app.chat.languages import LANGUAGE_NAMES
from app.chat.turns import Turns
from app.preview import Previews
from app.snippets.library import SnippetLibrary
from app.store import Store
from app.ui.ask import AskEndpoint
from app.ui.attachments import AttachmentsUI
from app.ui.backends import BackendsPanel
from app.ui.branches import BranchesUI
from app.ui.chat import ChatButtons, ChatUI, ChatView
from app.ui.checks import ChecksUI, CheckView
from app.ui.compare import ChatParts, CompareUI
from app.ui.controls import generation_controls
from app.ui.downloads import Downloads
from app.ui.gradio_compat import SkippingBlocks
from app.ui.page import page_behaviour
from app.ui.preview import PreviewUI
from app.ui.raw import RawUI
from app.ui.render import header_markdown
from app.ui.sharing import SharingUI
from app.ui.snippets import SnippetsUI
from app.ui.transfer import TransferUI
from app.ui.users import PageUsers

EXAMPLES = [
    "Write a Python function that checks whether a string is a palindrome, ignoring case and "
    "punctuation, with a few doctests.",
    "Write a Bash one-liner that lists the 10 largest files under the current directory.",
    "Write a SQL query that returns the second highest salary from an `employees` table.",
    "Convert this JavaScript to TypeScript with types: "
    "`function sum(xs) { return xs.reduce((a, b) => a + b, 0); }`",
    "Find the bug and fix it: `def mean(xs): return sum(xs) / len(xs)`",
]


class PlaygroundUI:
    def __init__(
        self, service: ChatService, store: Store, guard: Guard, checks: Checks | None = None
    ) -> None:
        """The page's parts; ``checks``: the runs and checks the API shares (by default, the
        page's own)."""
        self.service = service
        self.store = store
        self.settings = settings = service.settings
        self.users = PageUsers(settings, store)
        self.downloads = Downloads()
        self.transfer = TransferUI(self.users, self.downloads, AttachmentLimits(
            settings.attachment_max_bytes, settings.attachments_per_message,
        ))
        self.branches = BranchesUI(self.users)
        self.backends = BackendsPanel(service, self.users)
        self.previews = Previews(settings.preview_max_bytes)
        self.preview = PreviewUI(self.previews, self.users)
        self.attachments = AttachmentsUI(settings)
        self.turns = Turns(service, guard)
        self.checks = checks or Checks(service, self.turns)
        self.chat = ChatUI(service, self.turns, self.users, self.backends, self.attachments)
        self.runs = ChecksUI(self.checks, self.users, settings)
        self.snippets = SnippetsUI(
            service, self.turns, self.checks, SnippetLibrary(store), self.users,
            settings.runs_allowed, self.downloads, self.preview,
        )
        self.raw = RawUI(service, self.turns, self.users)
        self.compare = CompareUI(
            service, Comparer(self.turns), self.users, self.branches, self.checks,
        )
        self.sharing = SharingUI(self.users) if settings.allow_sharing else None
        self.ask = AskEndpoint(self.turns, self.users, settings)

    def build(self) -> gr.Blocks:
        """The page, its components wired to their handlers."""
        s, snippets, sharing = self.settings, self.snippets, self.sharing
        # Gradio's copies of served and uploaded files: checked hourly, gone after a day.
        with SkippingBlocks(title="Coding Playground", delete_cache=(3600, 86400)) as demo:
            chat = gr.State(Chat())
            with gr.Sidebar(label="Conversations", open=True):
                new = gr.Button("New conversation", elem_id="new-chat")
                if s.auth_mode == "password":
                    gr.Button("Sign out", link="/logout", size="sm", elem_id="sign-out")
                if s.auth_mode == "hf":
                    # Its presence makes Gradio add /login/huggingface, /login/callback,
                    # /logout and the session cookie that carries the login.
                    gr.LoginButton(size="sm", elem_id="sign-in")
                search = gr.Textbox(
                    placeholder="Search titles and messages", show_label=False,
                    elem_id="search",
                )
                conversations = gr.Radio(
                    [], label="Conversations", show_label=False, elem_id="conversations"
                )
                title = gr.Textbox(
                    label="Title", placeholder="A new title, then Rename", elem_id="title"
                )
                with gr.Row():
                    rename = gr.Button("Rename", size="sm", elem_id="rename")
                    delete = gr.Button("Delete", size="sm", variant="stop", elem_id="delete")
                with gr.Row(visible=False) as confirm_row:
                    gr.Markdown("Delete this conversation for good?")
                    confirm = gr.Button("Delete", size="sm", variant="stop", elem_id="confirm")
                    cancel = gr.Button("Keep", size="sm", elem_id="cancel")
                with gr.Accordion("Export and import", open=False):
                    self.transfer.controls(chat, conversations)
                    if sharing is not None:
                        sharing.import_box(conversations)
                if sharing is not None:
                    sharing.panel(demo, chat)
                page_behaviour(demo)
            header = gr.Markdown(header_markdown(None, None), elem_id="header")
            if s.auth_mode == "hf":
                gr.Markdown(
                    "Sign in with Hugging Face (in the sidebar) to chat; you see only your own "
                    "conversations.", elem_id="sign-in-note",
                )
            if s.ephemeral_history:
                gr.Markdown(
                    "**This Space has no persistent storage: conversations and snippets are "
                    "lost when it restarts.** Its owner can add storage in the Space's "
                    "settings.", elem_id="storage-warning",
                )
            backends, check = self.backends.panel()
            with gr.Tabs() as tabs:
                with gr.Tab("Chat", id="chat", elem_id="chat-tab"):
                    with gr.Row():
                        chatbot = gr.Chatbot(
                            height=520, buttons=["copy", "copy_all"], elem_id="chat",
                            show_label=False, placeholder="Ask for code, a fix, or an explanation.",
                            editable="user", scale=3,
                        )
                        self.preview.chat_request(self.preview.panel("chat-preview"))
                    self.branches.controls(demo, chatbot, chat)
                    self.attachments.viewer(demo, chat)
                    notice = gr.Markdown(elem_id="notice")
                    with gr.Row(elem_id="message-row", elem_classes=["message-row"]):
                        message = gr.Textbox(
                            placeholder="Type a message; Enter sends, Shift+Enter adds a line",
                            show_label=False, lines=1, max_lines=12, scale=8, elem_id="message",
                        )
                        with gr.Column(scale=1, min_width=120):
                            send = gr.Button("Send", variant="primary", elem_id="send")
                            stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    attach = self.attachments.box()
                    with gr.Row(equal_height=True):
                        language = gr.Dropdown(
                            [("Any language", ""),
                             *((name, key) for key, name in LANGUAGE_NAMES.items())],
                            value="", label="Language", show_label=False, scale=2,
                            min_width=160, elem_id="language",
                        )
                        model = gr.Dropdown(
                            [], label="Model", show_label=False, scale=3, min_width=200,
                            allow_custom_value=True, elem_id="model",
                        )
                        retry = gr.Button("Retry", size="sm", elem_id="retry")
                        undo = gr.Button("Undo", size="sm", elem_id="undo")
                        clear = gr.Button("Clear", size="sm", elem_id="clear")
                    gr.Examples(EXAMPLES, inputs=[message], label="Try one")
                    self.runs.controls(demo, CheckView(chatbot, chat), self.runs.tests_box())
                    with gr.Accordion("System prompt and generation settings", open=False):
                        system_prompt = gr.Textbox(s.system_prompt, label="System prompt", lines=4)
                        controls = generation_controls(s)
                    saving = snippets.save_panel()

                self.raw.tab(chat, model, system_prompt, language, message, controls)
                snippets.tab(demo, saving, chat, model)
                self.compare.tab()
            # The browser keeps the conversation on screen, to show it again after a reload.
            last = gr.BrowserState(None, storage_key="coding-playground-conversation")
            self.chat.wire(demo, ChatView(
                chatbot, chat, message, attach, notice, header, conversations, title,
                confirm_row, system_prompt, language, model, controls, backends, last,
            ), ChatButtons(send, stop, retry, undo, clear, new, search, rename, delete,
                           confirm, cancel, check))
            self.compare.wire(demo, ChatParts(
                chat, system_prompt, language, controls, chatbot, tabs, conversations, last,
            ))
            self.ask.wire(demo)
        blocks: gr.Blocks = demo
        return blocks
