// autobuilder: the /monitor overview (building now, history, recipes). Needs common.js.
"use strict";

const CONSOLE_LINES = 15;        // lines of each running build's console on /monitor
const HISTORY_ROWS = 50;

function monitorPage() {
  const builds = new Map();
  const connection = new LiveConnection(websocketUrl(), {
    build: (build) => {
      builds.set(build.id, build);
      render();
    },
    lines: (id, seq, lines) => {
      const console = document.querySelector(`[data-console="${id}"]`);
      if (console) appendLines(console, seq, lines, CONSOLE_LINES);
    },
    resync: () => refresh(),
  });
  window.autobuilderLive = connection;

  async function refresh() {
    const [active, history] = await Promise.all([
      getJson("/build/status"),
      getJson(`/build/history?limit=${HISTORY_ROWS}`),
    ]);
    for (const build of [...history, ...active]) builds.set(build.id, build);
    render();
  }

  function render() {
    const all = [...builds.values()].sort((a, b) => b.id - a.id);
    const active = all.filter((b) => !FINAL.has(b.status) && b.kind === "build").reverse();
    const finished = all.filter((b) => FINAL.has(b.status) && b.kind === "build").slice(0, HISTORY_ROWS);
    const reloads = new Map();
    for (const b of all) if (b.kind === "reload" && !reloads.has(b.project)) reloads.set(b.project, b);

    renderActive(active);
    for (const b of active) connection.subscribe(b.id, CONSOLE_LINES);
    for (const id of connection.subscriptions.keys()) {
      const build = builds.get(id);
      if (!build || FINAL.has(build.status)) connection.unsubscribe(id);
    }
    renderHistory(finished);
    renderReloads([...reloads.values()]);
    tickDurations(builds);
  }

  function renderActive(active) {
    const section = document.getElementById("active");
    const wanted = new Set(active.map((b) => String(b.id)));
    for (const card of [...section.querySelectorAll(".card")]) if (!wanted.has(card.dataset.id)) card.remove();
    document.getElementById("idle").hidden = active.length > 0;
    for (const build of active) {
      let card = section.querySelector(`.card[data-id="${build.id}"]`);
      if (!card) {
        card = el("article", { className: "card", "data-id": build.id }, [
          el("header"),
          el("div", { className: "console log", "data-console": build.id }),
        ]);
        section.appendChild(card);
      }
      const header = card.querySelector("header");
      header.replaceChildren(
        badge(build.status),
        el("a", { href: `/monitor/build/${build.id}`, text: ` #${build.id} ` }),
        el("strong", { text: `${build.repository} · ${build.branch}` }),
        el("span", { className: "quiet", text: ` ${build.script} in ${build.baseimage || "?"} ` }),
        el("span", { className: "duration", "data-duration": build.id }),
        el("div", { className: "commit" }, [
          el("code", { text: build.commit.slice(0, 10) }),
          el("span", { text: ` ${(build.message || "").split("\n")[0]}` }),
          el("span", { className: "quiet", text: build.author ? ` — ${build.author}` : "" }),
        ]),
      );
    }
  }

  function renderHistory(finished) {
    const body = document.getElementById("history");
    body.replaceChildren(
      ...finished.map((b) =>
        el("tr", { className: b.status }, [
          el("td", {}, [el("a", { href: `/monitor/build/${b.id}`, text: String(b.id) })]),
          el("td", {}, [badge(b.status)]),
          el("td", { text: b.repository }),
          el("td", { text: b.branch }),
          el("td", { title: b.message || "" }, [el("code", { text: b.commit.slice(0, 10) })]),
          el("td", { text: b.script }),
          el("td", { "data-duration": b.id }),
          el("td", { className: "result" }, [
            b.artifact_url
              ? el("a", { href: b.artifact_url, text: b.artifact })
              : el("span", { className: b.artifact ? "" : "reason", text: b.artifact || b.error || "" }),
          ]),
          el("td", {}, [el("a", { href: `/build/${b.id}/log`, text: "log" })]),
        ]),
      ),
    );
  }

  function renderReloads(reloads) {
    const body = document.getElementById("reloads");
    body.replaceChildren(
      ...reloads.map((b) =>
        el("tr", { className: b.status }, [
          el("td", { text: b.project }),
          el("td", {}, [badge(b.status)]),
          el("td", { text: `${b.repository} · ${b.branch}` }),
          el("td", {}, [el("code", { text: (b.commit || "").slice(0, 10) })]),
          el("td", { text: b.ended || "" }),
          el("td", { className: "reason", text: b.error || "" }),
          el("td", {}, [el("a", { href: `/build/${b.id}/log`, text: "log" })]),
        ]),
      ),
    );
  }

  setInterval(() => tickDurations(builds), 1000);
}

monitorPage();
