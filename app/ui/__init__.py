"""The Gradio page; it talks to the chat service and knows nothing of HTTP."""

from app.ui.blocks import PlaygroundUI

__all__ = ["PlaygroundUI"]
