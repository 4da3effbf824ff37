// autobuilder: the /monitor overview (building now, history grouped by push, recipes). Needs
// common.js. The filters and the page of history are the URL's query (?repository=&branch=&status=
// &before=), so reload, back and forward keep them.
"use strict";

const CONSOLE_LINES = 15;        // lines of each running build's console on /monitor
const HISTORY_ROWS = 50;         // builds asked for per page of history (?limit= for another size)
const FILTERS = ["repository", "branch", "status"];

// "3 min ago", from a time and now.
function relativeTime(iso, now = Date.now()) {
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  const days = Math.round(hours / 24);
  if (days < 45) return days === 1 ? "yesterday" : `${days} days ago`;
  return new Date(iso).toLocaleDateString();
}

// A <time> saying how long ago `iso` was, the exact time in the viewer's zone on hover.
function timeAgo(iso) {
  if (!iso) return el("span");
  return el("time", { datetime: iso, title: new Date(iso).toLocaleString(), text: relativeTime(iso) });
}

function tickTimes() {
  for (const node of document.querySelectorAll("time[datetime]")) node.textContent = relativeTime(node.getAttribute("datetime"));
}

// Consecutive builds of one commit of one branch are one push.
function groupByPush(builds) {
  const groups = [];
  for (const b of builds) {
    const last = groups[groups.length - 1];
    const key = `${b.project}\n${b.repository}\n${b.branch}\n${b.commit}`;
    if (last && last.key === key) last.builds.push(b);
    else groups.push({ key, builds: [b] });
  }
  return groups;
}

function commitUrl(build) {
  const base = (document.body.dataset.githubUrl || "https://github.com").replace(/\/+$/, "");
  return `${base}/${build.repository}/commit/${build.commit}`;
}

function monitorPage() {
  const query = new URLSearchParams(location.search);
  const filters = Object.fromEntries(FILTERS.map((name) => [name, query.get(name) || ""]));
  const before = query.get("before") || "";
  const limit = query.get("limit") || "";
  const pageSize = Math.min(1000, Math.max(1, Number(limit) || HISTORY_ROWS));
  const builds = new Map();      // every build seen: history, active, live events
  let history = [];              // the ids of this page of history, newest first
  let cursor = null;             // the `before` of the next page, when there is one

  fillFilters();

  const connection = new LiveConnection(websocketUrl(), {
    build: (build) => {
      builds.set(build.id, build);
      // A build that ends while the first page is shown joins it.
      if (!before && build.kind === "build" && FINAL.has(build.status) && matches(build) && !history.includes(build.id)) {
        history.push(build.id);
        history.sort((a, b) => b - a);
      }
      render();
    },
    lines: (id, seq, lines) => {
      const console = document.querySelector(`[data-console="${id}"]`);
      if (!console) return;
      appendLines(console, seq, lines, CONSOLE_LINES);
      console.scrollTop = console.scrollHeight; // the newest lines in view
    },
    resync: () => refresh(),
  });
  window.autobuilderLive = connection;

  function fillFilters() {
    const form = document.getElementById("filters");
    for (const name of FILTERS) form.elements[name].value = filters[name];
    document.getElementById("clear-filters").hidden = !FILTERS.some((name) => filters[name]);
    form.elements.status.addEventListener("change", () => form.requestSubmit());
  }

  function matches(build) {
    return FILTERS.every((name) => !filters[name] || build[name] === filters[name]);
  }

  function historyQuery(extra) {
    const params = new URLSearchParams();
    for (const name of FILTERS) if (filters[name]) params.set(name, filters[name]);
    if (limit) params.set("limit", limit);
    for (const [name, value] of Object.entries(extra)) if (value) params.set(name, value);
    return params.toString();
  }

  async function refresh() {
    const [active, page, reloads] = await Promise.all([
      getJson("/build/status"),
      getJson(`/build/history?${historyQuery({ kind: "build", limit: pageSize, before })}`),
      getJson("/build/history?kind=reload&limit=50"),
    ]);
    // A full page may end in the middle of a push: that push starts the next page instead.
    let kept = page;
    cursor = null;
    if (page.length === pageSize) {
      const groups = groupByPush(page);
      if (groups.length > 1) kept = groups.slice(0, -1).flatMap((g) => g.builds);
      cursor = kept[kept.length - 1].id;
    }
    history = kept.filter((b) => FINAL.has(b.status) || filters.status).map((b) => b.id);
    for (const build of [...kept, ...active, ...reloads]) builds.set(build.id, build);
    render();
  }

  function render() {
    const all = [...builds.values()].sort((a, b) => b.id - a.id);
    const active = all.filter((b) => !FINAL.has(b.status) && b.kind === "build" && matches(b)).reverse();
    const reloads = new Map();
    for (const b of all) if (b.kind === "reload" && !reloads.has(b.project)) reloads.set(b.project, b);

    renderActive(active);
    for (const b of active) connection.subscribe(b.id, CONSOLE_LINES);
    for (const id of connection.subscriptions.keys()) {
      const build = builds.get(id);
      if (!build || FINAL.has(build.status)) connection.unsubscribe(id);
    }
    renderHistory(history.map((id) => builds.get(id)).filter(Boolean));
    renderPager();
    renderChoices(all.filter((b) => b.kind === "build"));
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
          // Scrolls: focusable, so that a keyboard scrolls it too.
          el("div", {
            className: "console log",
            "data-console": build.id,
            tabindex: "0",
            role: "region",
            "aria-label": `output of build #${build.id}`,
          }),
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
          el("a", { href: commitUrl(build), className: "sha" }, [el("code", { text: build.commit.slice(0, 10) })]),
          el("span", { text: ` ${(build.message || "").split("\n")[0]}` }),
          el("span", { className: "quiet", text: build.author ? ` — ${build.author}` : "" }),
        ]),
      );
    }
  }

  function scriptCell(b) {
    return el("div", { className: `script ${b.status}`, "data-build": b.id }, [
      el("div", { className: "script-head" }, [
        badge(b.status),
        el("a", { href: `/monitor/build/${b.id}`, text: `#${b.id} ${b.script}` }),
        el("span", { className: "duration", "data-duration": b.id }),
        el("a", { href: `/build/${b.id}/log`, className: "quiet", text: "log" }),
      ]),
      el("div", { className: "result" }, [
        b.artifact_url
          ? el("a", { href: b.artifact_url, text: b.artifact })
          : el("span", { className: b.artifact ? "" : "reason", text: b.artifact || b.error || "" }),
      ]),
    ]);
  }

  function renderHistory(list) {
    const groups = groupByPush(list);
    document.getElementById("no-history").hidden = groups.length > 0;
    document.getElementById("history").replaceChildren(
      ...groups.map(({ builds: scripts }) => {
        const first = scripts[0];
        const ended = scripts.map((b) => b.ended || b.created).sort().pop();
        return el("tr", { className: "push", "data-commit": first.commit }, [
          el("td", { className: "when" }, [timeAgo(ended)]),
          el("td", { className: "what" }, [
            el("strong", { text: first.repository }),
            el("span", { className: "quiet", text: " · " }),
            el("span", { className: "branch", text: first.branch }),
            el("div", { className: "commit" }, [
              el("a", { href: commitUrl(first), className: "sha", title: "the commit on GitHub" }, [
                el("code", { text: first.commit.slice(0, 10) }),
              ]),
              el("span", { className: "message", text: ` ${(first.message || "").split("\n")[0]}` }),
              el("span", { className: "quiet", text: first.author ? ` — ${first.author}` : "" }),
            ]),
          ]),
          el("td", { className: "scripts" }, [...scripts].reverse().map(scriptCell)),
        ]);
      }),
    );
    tickTimes();
  }

  function renderPager() {
    const older = document.getElementById("older");
    older.hidden = cursor === null;
    if (cursor !== null) older.href = `/monitor?${historyQuery({ before: cursor })}`;
    const newer = document.getElementById("newer");
    newer.hidden = !before;
    newer.href = `/monitor?${historyQuery({})}`.replace(/\?$/, "");
  }

  // The repositories and branches seen, offered as the filters' choices.
  function renderChoices(all) {
    for (const [id, name] of [["repositories", "repository"], ["branches", "branch"]]) {
      const values = [...new Set(all.map((b) => b[name]))].sort();
      document.getElementById(id).replaceChildren(...values.map((value) => el("option", { value })));
    }
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
          el("td", {}, [timeAgo(b.ended)]),
          el("td", { className: "reason", text: b.error || "" }),
          el("td", {}, [el("a", { href: `/build/${b.id}/log`, text: "log" })]),
        ]),
      ),
    );
  }

  setInterval(() => {
    tickDurations(builds);
    tickTimes();
  }, 1000);
}

monitorPage();
