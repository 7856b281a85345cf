"""What the page does in the browser itself: its own CSS (the Backends panel's marks, small
screens), its keyboard shortcuts with the overlay that lists them, and the sidebar folded
away on a small screen.

The shortcuts press the page's own buttons, so they do what a click does. None of them is a
key the browser or a screen reader needs: Enter and Shift+Enter are the message box's own,
Esc stops a reply only when no menu or dialog is open, the others take Alt+Shift (which the
browsers leave free), and ``?`` opens the list only outside text fields.
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

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
@media (max-width: {NARROW_PX}px) {{
  .gradio-container {{ padding-left: 0.5rem !important; padding-right: 0.5rem !important; }}
  #send, #stop {{ min-width: 0; }}
}}
"""

# Runs once in the page.
PAGE_SCRIPT = """() => {
  const shortcuts = __SHORTCUTS__;
  const narrow = window.matchMedia("(max-width: __NARROW_PX__px)");
  const press = (id) => document.getElementById(id)?.click();
  const sidebar = () => document.querySelector(".sidebar");
  const fold = () => {
    if (narrow.matches && sidebar()?.classList.contains("open")) {
      sidebar().querySelector(".toggle-button")?.click();
    }
  };

  const overlay = document.createElement("div");
  overlay.id = "shortcuts-overlay";
  overlay.hidden = true;
  overlay.setAttribute("role", "dialog");
  overlay.setAttribute("aria-modal", "true");
  overlay.setAttribute("aria-labelledby", "shortcuts-title");
  const panel = document.createElement("div");
  panel.className = "panel";
  const title = document.createElement("h2");
  title.id = "shortcuts-title";
  title.textContent = "Keyboard shortcuts";
  const table = document.createElement("table");
  for (const [keys, what] of shortcuts) {
    const row = table.insertRow();
    const key = document.createElement("kbd");
    key.textContent = keys;
    row.insertCell().append(key);
    row.insertCell().textContent = what;
  }
  const close = document.createElement("button");
  close.id = "shortcuts-close";
  close.textContent = "Close";
  panel.append(title, table, close);
  overlay.append(panel);
  document.body.append(overlay);
  let before = null;
  const show = () => { before = document.activeElement; overlay.hidden = false; close.focus(); };
  const hide = () => { overlay.hidden = true; before?.focus?.(); };
  close.addEventListener("click", hide);
  overlay.addEventListener("click", (event) => { if (event.target === overlay) hide(); });
  window.playgroundShortcuts = show;

  const typing = (target) => target.closest?.("input, textarea, select, [contenteditable]");
  const menuOpen = () => document.querySelector('[role="listbox"], .options');
  document.addEventListener("keydown", (event) => {
    if (!overlay.hidden) {
      if (event.key === "Escape") { event.preventDefault(); hide(); }
      return;
    }
    const alt = event.altKey && event.shiftKey && !event.ctrlKey && !event.metaKey;
    const actions = {
      KeyR: () => press("retry"),
      KeyN: () => press("new-chat"),
      KeyM: () => document.querySelector("#message textarea")?.focus(),
    };
    if (alt && actions[event.code]) {
      event.preventDefault();
      actions[event.code]();
    } else if (event.key === "Escape" && !menuOpen()) {
      press("stop");
    } else if (event.key === "?" && !event.ctrlKey && !event.metaKey && !typing(event.target)) {
      event.preventDefault();
      show();
    }
  });

  fold();
  document.addEventListener("click", (event) => {
    if (event.target.closest?.("#conversations label, #new-chat")) setTimeout(fold, 0);
  });
}""".replace("__SHORTCUTS__", json.dumps(SHORTCUTS)).replace("__NARROW_PX__", str(NARROW_PX))


def page_script() -> str:
    """The scripts the page runs once as it opens: the Preview buttons on the chat's code
    (``preview.js``) and the text of replies as it comes (``live.js``)."""
    calls = "".join(f"({Path(__file__).with_name(name).read_text().strip().rstrip(';')})();\n"
                    for name in ("preview.js", "live.js"))
    return f"() => {{\n{calls}}}"


def page_behaviour(page: gr.Blocks) -> None:
    """Install the page's script, and the sidebar's button that opens the shortcuts' list."""
    button = gr.Button("Keyboard shortcuts (?)", size="sm", elem_id="shortcuts")
    button.click(None, js="() => window.playgroundShortcuts()")
    page.load(None, js=PAGE_SCRIPT)
