// autobuilder: the cancel and rebuild buttons of a build page (templates/actions.html), shown only
// to a signed-in user with write access. Cancel while the build is queued or running, rebuild once
// it ended; every request carries the session's CSRF token.
"use strict";

function buildActions() {
  const box = document.getElementById("actions");
  if (!box) return;
  const id = box.dataset.buildId;
  const cancel = document.getElementById("cancel-build");
  const rebuild = document.getElementById("rebuild-build");
  const result = document.getElementById("action-result");
  const status = document.getElementById("status");

  // The status badge is kept current by the page's live connection; the buttons follow it.
  function update() {
    const badge = status.querySelector(".badge");
    const ended = badge ? FINAL.has(badge.textContent.trim()) : false;
    cancel.hidden = ended;
    rebuild.hidden = !ended;
  }

  async function act(action, button) {
    button.disabled = true;
    result.className = "result";
    result.textContent = action === "cancel" ? "cancelling…" : "queueing a rebuild…";
    try {
      const response = await fetch(`/build/${id}/${action}`, {
        method: "POST",
        headers: { "X-CSRF-Token": box.dataset.csrf },
        credentials: "same-origin",
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        result.className = "result refused";
        result.textContent = body.error || `refused (${response.status})`;
        return;
      }
      result.textContent = body.message || "done";
      if (action === "rebuild" && body.builds && body.builds.length) location.assign(`/monitor/build/${body.builds[0]}`);
    } finally {
      button.disabled = false;
    }
  }

  cancel.addEventListener("click", () => act("cancel", cancel));
  rebuild.addEventListener("click", () => act("rebuild", rebuild));
  new MutationObserver(update).observe(status, { childList: true, subtree: true, characterData: true });
  update();
}

buildActions();
