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
  // Refresh the page while a jail is changing state, so the badge settles.
  const busy = [...document.querySelectorAll("[data-jail-state]")]
    .some((el) => ["starting", "stopping", "deleting", "pending"].includes(el.textContent.trim()));
  if (busy && !document.querySelector("form.grid2")) {
    setTimeout(() => window.location.reload(), 2000);
  }
});
