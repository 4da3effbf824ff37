// autobuilder: one build page, /monitor/build/<id>. Needs common.js.
"use strict";

const BUILD_PAGE_LINES = 5000;   // lines kept on a build page (older ones: see the raw log)

function buildPage() {
  const id = Number(document.body.dataset.buildId);
  const builds = new Map();
  const log = document.getElementById("log");
  const follow = document.getElementById("follow");
  let dropped = 0;

  const connection = new LiveConnection(websocketUrl(), {
    build: (build) => {
      if (build.id !== id) return;
      builds.set(id, build);
      renderHeader(build);
    },
    lines: (buildId, seq, lines) => {
      if (buildId !== id) return;
      if (dropped === 0 && seq > 1 && !log.childElementCount) dropped = seq - 1;
      dropped += appendLines(log, seq, lines, BUILD_PAGE_LINES);
      const notice = document.getElementById("earlier");
      notice.hidden = dropped === 0;
      notice.querySelector("span").textContent = String(dropped);
      if (follow.checked) log.scrollTop = log.scrollHeight;
    },
    resync: async () => renderHeader(await getJson(`/build/${id}`)),
  });
  window.autobuilderLive = connection;
  connection.subscribe(id, BUILD_PAGE_LINES);

  function renderHeader(build) {
    builds.set(id, build);
    document.getElementById("status").replaceChildren(badge(build.status));
    const reason = document.getElementById("reason");
    reason.textContent = build.error || "";
    const artifact = document.getElementById("artifact");
    artifact.replaceChildren(
      build.artifact_url ? el("a", { href: build.artifact_url, text: build.artifact }) : el("span", { text: build.artifact || "" }),
    );
    for (const node of [reason, artifact]) {
      node.hidden = !node.textContent;
      document.querySelector(`dt[data-for="${node.id}"]`).hidden = node.hidden;
    }
    tickDurations(builds);
  }

  log.addEventListener("scroll", () => {
    follow.checked = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  });
  setInterval(() => tickDurations(builds), 1000);
}


buildPage();
