() => {
  // The text of a reply being written, as it comes (app/live.py). The server renders the
  // chat every STREAM_RENDER_INTERVAL with a marker after the reply's text (all in classes,
  // the only attribute the chat's sanitizer keeps):
  //   <span class="live-tail live-key-KEY live-at-N live-code-0|1"></span>
  // This script reads live/KEY?offset=N (server-sent events: the text added, with the offset
  // it ends at as the event's id; then "end"; the browser opens it again from the last id
  // when the server ends it) and shows the text past N in the marker, or, when the rendered
  // text ends inside a code block (live-code-1), at the end of that block. Offsets count
  // characters as Python does (code points), not UTF-16 units. Before the first text, a
  // "waiting" event says that the reply waits for one of the model's slots: that sentence
  // shows in the marker until the text comes.
  // A browser has six connections for the host and each page's Gradio channel holds two: one
  // tab at a time reads a stream, the one holding the lock LOCK (the others show the renders
  // meanwhile). Without Web Locks (no secure context), the server ends each stream after a
  // second, so that the page's other requests get a connection.
  const LOCK = "coding-playground-live";
  const streams = new Map(); // key -> { chunks: [[start, text]], shown: [], waiting }
  const ended = new Set(); // keys whose reply ended: a late render opens nothing again

  const marked = (marker, name) =>
    (marker.className.match(new RegExp(`(?:^| )live-${name}-([\\w-]+)`)) || [])[1];

  const tail = (stream, offset) => {
    let text = "";
    for (const [start, chunk] of stream.chunks) {
      if (start >= offset) {
        text += chunk;
        continue;
      }
      const points = Array.from(chunk);
      if (start + points.length > offset) text += points.slice(offset - start).join("");
    }
    return text;
  };

  const codeBefore = (marker) => {
    const message = marker.closest(".message-content, .message, .prose") ||
      marker.parentElement;
    const codes = message ? message.querySelectorAll("pre code") : [];
    const code = codes[codes.length - 1];
    return code && (code.compareDocumentPosition(marker) & Node.DOCUMENT_POSITION_FOLLOWING)
      ? code : null;
  };

  // Markdown ends a code block's text with a line break of its own, and the render's offset
  // there is before the line breaks the reply's text ended with: the live text goes before
  // that line break, so that the line the render ended in goes on (after it, the rest of the
  // line showed on the next one, a combining mark cut from its letter). That line break
  // stands for the live text's last one; a block still empty shows it alone, and the live
  // text's first line break is then the opening fence's.
  const goOn = (code, span, text) => {
    const walker = document.createTreeWalker(code, NodeFilter.SHOW_TEXT);
    let last = null;
    while (walker.nextNode()) last = walker.currentNode;
    if (!last || !last.data.endsWith("\n")) {
      span.textContent = text;
      code.append(span);
      return;
    }
    const shown = code.textContent === "\n" ? text.replace(/^(?:\r\n|\r|\n)/, "") : text;
    span.textContent = shown.replace(/(?:\r\n|\r|\n)$/, "");
    (last.length > 1 ? last.splitText(last.length - 1) : last).before(span);
  };

  const show = (key) => {
    const stream = streams.get(key);
    if (!stream) return;
    for (const span of stream.shown) span.remove();
    stream.shown = [];
    for (const marker of document.querySelectorAll(`span.live-tail.live-key-${key}`)) {
      const offset = Number(marked(marker, "at")) || 0;
      // The text before the offset is rendered: its chunks go.
      stream.chunks = stream.chunks.filter(([start, chunk]) =>
        start + Array.from(chunk).length > offset);
      const text = tail(stream, offset);
      const code = marked(marker, "code") === "1" ? codeBefore(marker) : null;
      const span = document.createElement("span");
      span.className = "live-text";
      span.style.whiteSpace = "pre-wrap";
      if (!text && stream.waiting) {
        span.className = "live-waiting";
        span.style.fontStyle = "italic";
        span.textContent = stream.waiting;
        marker.append(span);
      } else if (code) {
        goOn(code, span, text);
      } else {
        span.textContent = text;
        marker.append(span);
      }
      stream.shown.push(span);
    }
  };

  const read = (key, stream, held) => new Promise((done) => {
    // From the newest render's offset: it may have come while the lock was awaited.
    const offsets = Array.from(document.querySelectorAll(`span.live-tail.live-key-${key}`),
      (marker) => Number(marked(marker, "at")) || 0);
    if (!offsets.length) {
      done();
      return;
    }
    let end = Math.max(...offsets);
    const source = new EventSource(
      `live/${encodeURIComponent(key)}?offset=${end}${held ? "&held=1" : ""}`);
    const close = () => {
      source.close();
      done();
    };
    source.onmessage = (event) => {
      const text = JSON.parse(event.data);
      stream.waiting = null;
      stream.chunks.push([end, text]);
      end = Number(event.lastEventId) || end + Array.from(text).length;
      show(key);
    };
    source.addEventListener("waiting", (event) => {
      stream.waiting = JSON.parse(event.data);
      show(key);
    });
    source.addEventListener("end", close);
    // 204 (a reply that ended, or one another process writes): the renders show it.
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) close();
    };
  });

  const open = async (marker) => {
    const key = marked(marker, "key");
    if (!key || streams.has(key) || ended.has(key)) return;
    const stream = { chunks: [], shown: [], waiting: null };
    streams.set(key, stream);
    if (navigator.locks) {
      await navigator.locks.request(LOCK, () => read(key, stream, true));
    } else {
      await read(key, stream, false);
    }
    ended.add(key);
    streams.delete(key);
  };

  new MutationObserver((records) => {
    const keys = new Set();
    for (const record of records) {
      for (const node of record.addedNodes) {
        if (!(node instanceof Element)) continue;
        const markers = node.matches("span.live-tail") ? [node]
          : node.querySelectorAll("span.live-tail");
        for (const marker of markers) {
          open(marker);
          keys.add(marked(marker, "key"));
        }
      }
    }
    // A new render replaced the marker: show the text past its offset at once.
    for (const key of keys) show(key);
  }).observe(document.body, { childList: true, subtree: true });
};
