"""What the page does in the browser itself: its own CSS (the Backends panel's marks, small
screens), its keyboard shortcuts with the overlay that lists them, and the sidebar folded
away on a small screen.

The shortcuts press the page's own buttons, so they do what a click does. None of them is a
key the browser or a screen reader needs: Enter and Shift+Enter are the message box's own,
Esc stops a reply only when no menu or dialog is open, the others take Alt+Shift (which the
browsers leave free), and ``?`` opens the list only outside text fields.
"""

from __future__ import annotations

import gradio as gr

from app.ui.scripts import call, source

# (keys, what they do), as the overlay and docs/features.md list them.
SHORTCUTS = [
    ("Enter", "Send the message"),
    ("Shift+Enter", "New line in the message"),
    ("Esc", "Stop the reply"),
    ("Alt+Shift+R", "Retry the last message"),
    ("Alt+Shift+N", "New conversation"),
    ("Alt+Shift+M", "Move to the message box"),
    ("?", "This list (outside text fields)"),
]

# Below this width the sidebar starts folded, and folds again once a conversation is picked.
NARROW_PX = 768

PAGE_CSS = f"""
.state-up {{ color: #1a7f37; font-weight: 600; }}
.state-down {{ color: #cf222e; font-weight: 600; }}
.state-unknown {{ color: #59636e; }}
#backends table {{ display: block; overflow-x: auto; }}
#backends th {{ white-space: nowrap; word-break: keep-all; }}
#chat pre {{ max-width: 100%; overflow-x: auto; }}
#chat a[href^="#run-block-"], #chat a[href^="#check-reply-"] {{
  display: inline-block; padding: 0 0.45rem; border: 1px solid #d1d9e0; border-radius: 4px;
  font-size: 0.875em; text-decoration: none; white-space: nowrap;
}}
#chat .check-badge, #compare-columns .check-badge {{
  display: inline-block; padding: 0 0.5rem; border: 1px solid currentColor;
  border-radius: 999px; font-size: 0.875em; font-weight: 600; white-space: nowrap;
}}
#chat .check-pass, #compare-columns .check-pass {{ color: #1a7f37; }}
#chat .check-fail, #compare-columns .check-fail {{ color: #cf222e; }}
#chat .check-none, #compare-columns .check-none {{ color: #59636e; }}
#chat .check-trace, #compare-columns .check-trace {{
  border-left: 3px solid #d1d9e0; padding-left: 0.6rem;
}}
#chat .check-trace ul, #compare-columns .check-trace ul {{ padding-left: 1.1rem; }}
#chat .check-trace pre, #chat .check-trace code,
#compare-columns .check-trace pre, #compare-columns .check-trace code {{
  white-space: pre-wrap; overflow-wrap: anywhere;
}}
#shortcuts-overlay {{
  position: fixed; inset: 0; z-index: 1000; display: flex; align-items: center;
  justify-content: center; background: rgb(0 0 0 / 45%);
}}
#shortcuts-overlay[hidden] {{ display: none; }}
#shortcuts-overlay .panel {{
  background: var(--background-fill-primary, #fff); color: var(--body-text-color, #1f2328);
  border-radius: 8px; padding: 1rem 1.25rem; max-width: min(28rem, 92vw);
}}
#shortcuts-overlay kbd {{
  font-family: ui-monospace, monospace; border: 1px solid #8c959f; border-radius: 4px;
  padding: 0 0.3rem; white-space: nowrap;
}}
#shortcuts-overlay td {{ padding: 0.2rem 0.5rem; }}
/* Gradio's container hides its overflow, which would make it the box the message row sticks
   in (below); clip cuts the same and lets the row stick to the screen. Outside @media: Gradio
   puts its own container before the selectors of a media rule, so that rule could not match. */
.gradio-container {{ overflow: clip !important; }}
@media (max-width: {NARROW_PX}px) {{
  #send, #stop, #compare-send, #compare-stop {{ min-width: 0; }}
  /* The message box and Send (of the Chat and Compare tabs) stay at the bottom of the
     screen, the replies scrolling above them: on a phone the chat alone is taller than the
     screen. */
  .message-row {{
    position: sticky; bottom: 0; z-index: 10;
    background: var(--background-fill-primary, #fff); padding-bottom: 0.25rem;
  }}
}}
"""


def page_script() -> str:
    """The scripts the page runs once as it opens: the Preview buttons on the chat's code
    (``preview.js``) and the text of replies as it comes (``live.js``)."""
    calls = "".join(f"({source(name)})();\n" for name in ("preview.js", "live.js"))
    return f"() => {{\n{calls}}}"


def page_behaviour(page: gr.Blocks) -> None:
    """Install the page's script (``shortcuts.js``: the shortcuts, their list, the sidebar on a
    small screen), and the sidebar's button that opens the shortcuts' list."""
    button = gr.Button("Keyboard shortcuts (?)", size="sm", elem_id="shortcuts")
    button.click(None, js="() => window.playgroundShortcuts()")
    page.load(None, js=call("shortcuts.js", SHORTCUTS, NARROW_PX))
