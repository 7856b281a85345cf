() => {
  // Preview buttons on the HTML, SVG and Mermaid code blocks of the chat (app/ui/preview.py).
  // A click puts the block's language and code in window.playgroundPreview and clicks the
  // hidden #preview-ask, whose event reads them. The chat's updates are watched, and the
  // buttons added at most every DECORATE_MS, so that a streaming reply stays cheap.
  const DECORATE_MS = 200;
  const LANGUAGES = new Set(["html", "htm", "svg", "xml", "mermaid", "mmd"]);
  const SVG_START = /^\s*(<\?xml[^>]*>\s*)?<svg\b/;
  // Gradio renders a ```mermaid block as <div class="mermaid"> holding its text, then
  // replaces that text with the drawing: the text is kept here as soon as the div appears.
  const mermaidSources = new WeakMap();
  let pending = null;

  const keepMermaid = (node) => {
    if (!(node instanceof Element)) return;
    const found = node.matches("div.mermaid") ? [node] : node.querySelectorAll("div.mermaid");
    for (const div of found) {
      // Text only: once the drawing is in, its labels are no source.
      if (!mermaidSources.has(div) && !div.hasAttribute("data-processed") &&
          !div.firstElementChild) {
        mermaidSources.set(div, div.textContent);
      }
    }
  };

  const ask = (language, code) => {
    window.playgroundPreview = { language, code };
    document.querySelector("#preview-ask")?.click();
  };

  const button = (language, code) => {
    const made = document.createElement("button");
    made.type = "button";
    made.className = "preview-code";
    made.textContent = "Preview";
    made.title = "Show it running, in a sandboxed frame beside the chat";
    made.style.cssText = "position: absolute; top: 4px; right: 36px; z-index: 1; " +
      "width: auto; white-space: nowrap; font-size: 12px; line-height: 1.5; " +
      "padding: 1px 8px; border: 1px solid #d1d9e0; border-radius: 4px; " +
      "background: #fff; color: #1f2328; cursor: pointer;";
    made.addEventListener("click", (event) => {
      event.preventDefault();
      event.stopPropagation();
      ask(language, code);
    });
    return made;
  };

  const decorate = () => {
    pending = null;
    const chat = document.querySelector("#chat");
    if (!chat) return;
    for (const code of chat.querySelectorAll("pre > code[class*='language-']")) {
      const pre = code.parentElement;
      if (pre.parentElement.querySelector(":scope > .preview-code")) continue;
      const language = (code.className.match(/language-([\w-]+)/) || [])[1] || "";
      const text = code.textContent.replace(/\n$/, "");
      if (!LANGUAGES.has(language.toLowerCase())) continue;
      if (language === "xml" && !SVG_START.test(text)) continue;
      pre.parentElement.style.position ||= "relative";
      pre.before(button(language, text));
    }
    for (const div of chat.querySelectorAll("div.mermaid")) {
      const source = mermaidSources.get(div);
      if (source === undefined || div.nextElementSibling?.classList.contains("preview-code")) {
        continue;
      }
      const made = button("mermaid", source);
      made.style.position = "static";
      div.after(made);
    }
  };

  new MutationObserver((records) => {
    for (const record of records) record.addedNodes.forEach(keepMermaid);
    pending ??= setTimeout(decorate, DECORATE_MS);
  }).observe(document.body, { childList: true, subtree: true });
  keepMermaid(document.body);
  decorate();
};
