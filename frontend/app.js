// Progressive enhancement only: every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Show times in the viewer's time zone; the ISO value stays as a tooltip.
  for (const el of document.querySelectorAll("time[datetime]")) {
    const d = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(d.getTime())) {
      el.title = el.getAttribute("datetime");
      el.textContent = d.toLocaleString();
    }
  }
  // A jail's output, followed as it is printed (fetch streams the text).
  const log = document.querySelector("pre[data-log]");
  if (log && window.ReadableStream && window.TextDecoder) {
    const follow = async () => {
      try {
        const res = await fetch(log.dataset.log, { credentials: "same-origin" });
        if (!res.ok || !res.body) {
          log.textContent = await res.text();
          return;
        }
        const reader = res.body.getReader();
        const text = new TextDecoder();
        log.textContent = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
          log.textContent += text.decode(value, { stream: true });
          // Keep the newest 200,000 characters on the page.
          if (log.textContent.length > 200000) log.textContent = log.textContent.slice(-150000);
          if (atEnd) log.scrollTop = log.scrollHeight;
        }
      } catch (e) {
        log.dataset.error = String(e);
      }
    };
    follow();
  }
  // A console in the jail: xterm.js over a WebSocket to the panel.
  const opener = document.querySelector("button[data-console]");
  const screen = document.querySelector("[data-console-screen]");
  if (opener && screen && window.Terminal && window.WebSocket) {
    let ws = null;
    opener.addEventListener("click", () => {
      if (ws) {
        ws.close();
        return;
      }
      screen.hidden = false;
      screen.textContent = "";
      const term = new window.Terminal({ cursorBlink: true, fontSize: 14, scrollback: 2000 });
      term.open(screen);
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      ws = new WebSocket(`${scheme}://${location.host}${opener.dataset.console}?cols=${term.cols}&rows=${term.rows}`);
      ws.binaryType = "arraybuffer";
      const encoder = new TextEncoder();
      ws.onopen = () => {
        opener.textContent = "Close console";
        screen.dataset.state = "open";
        term.focus();
      };
      ws.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
      ws.onclose = (e) => {
        term.write(`\r\n[console closed${e.reason ? ": " + e.reason : ""}]\r\n`);
        screen.dataset.state = "closed";
        opener.textContent = "Open console";
        ws = null;
      };
      term.onData((d) => ws && ws.readyState === 1 && ws.send(encoder.encode(d)));
      term.onResize(({ cols, rows }) => ws && ws.readyState === 1 && ws.send(JSON.stringify({ cols, rows })));
    });
  }
  // Refresh the page while a jail is changing state, so the badge settles.
  const busy = [...document.querySelectorAll("[data-jail-state]")]
    .some((el) => ["starting", "stopping", "deleting", "pending"].includes(el.textContent.trim()));
  if (busy && !document.querySelector("form.grid2") && !document.querySelector("[data-console-screen][data-state=open]")) {
    setTimeout(() => {
      if (!document.querySelector("[data-console-screen][data-state=open]")) window.location.reload();
    }, 2000);
  }
});
