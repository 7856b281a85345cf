(shortcuts, narrowPx) => {
  // The page's keyboard shortcuts, the overlay that lists them (window.playgroundShortcuts
  // opens it) and the sidebar folded away below narrowPx (app/ui/page.py).
  // shortcuts: [[keys, what they do], ...], as the overlay lists them.
  const narrow = window.matchMedia(`(max-width: ${narrowPx}px)`);
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
};
