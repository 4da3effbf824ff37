// autobuilder: one build page, /monitor/build/<id>. Needs common.js.
//
// The page shows a window of the log (at most WINDOW_LINES rows): the tail, growing live, or the
// lines around one line opened by a permalink (#L120, #L120-L140) or a search hit. Lines come from
// GET /build/<id>/log/lines (with the time each arrived) and, live, from the websocket; a gap
// between the two is filled from the server. Sections come from the markers scripts print:
// GitHub Actions `::group::title` / `::endgroup::`, GitLab `section_start:<ts>:<name>[collapsed=true]
// \r\e[0K<title>` / `section_end:<ts>:<name>`, and autobuilder's own phase notes
// `[autobuilder] phase <name>` (each phase lasts until the next).
"use strict";

const WINDOW_LINES = 5000;   // rows on the page at once
const AROUND = 500;          // lines loaded before and after a line opened outside the window
const MAX_FETCH = 10000;     // lines the server gives at once

const GROUP = /^::group::(.*)$/;
const END_GROUP = /^::endgroup::/;
const GITLAB_START = /^(?:\x1b\[0K)?section_start:(\d+):([^[\r]+)(\[[^\]]*\])?\r(?:\x1b\[0K)?(.*)$/;
const GITLAB_END = /^(?:\x1b\[0K)?section_end:(\d+):([^\r]+)/;
const PHASE = /^\[autobuilder\] phase (\w+)$/;

const STATE_COLOURS = {
  queued: "#6b7385", running: "#2c6fbb", success: "#1f8a4c", failure: "#c0392b", error: "#b9770e", cancelled: "#8e44ad",
};

// A section marker in a raw line, or null.
function parseMarker(text) {
  let m = PHASE.exec(text);
  if (m) return { kind: "start", phase: true, name: m[1], title: null, collapsed: false, ts: null };
  m = GROUP.exec(text);
  if (m) return { kind: "start", phase: false, name: null, title: m[1], collapsed: false, ts: null };
  if (END_GROUP.test(text)) return { kind: "end", name: null, ts: null };
  m = GITLAB_START.exec(text);
  if (m) {
    const collapsed = /collapsed=true/.test(m[3] || "");
    return { kind: "start", phase: false, name: m[2], title: m[4], collapsed, ts: Number(m[1]) * 1000 };
  }
  m = GITLAB_END.exec(text);
  if (m) return { kind: "end", name: m[2], ts: Number(m[1]) * 1000 };
  return null;
}

// 75 -> "1m 15s"
function seconds(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
}

// 75000 -> "01:15", like GitLab's line times.
function clock(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const mmss = `${String(Math.floor(s / 60) % 60).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
  return s >= 3600 ? `${Math.floor(s / 3600)}:${mmss}` : mmss;
}

// The build's times said plainly: "queued for 5s", "running for 1m 02s", "took 12s", "never ran"
// (a build that ended without a line of log never ran: the store gives it a start at its end).
function durationLabel(build, now, logged) {
  const created = Date.parse(build.created);
  const started = build.started ? Date.parse(build.started) : null;
  if (build.status === "queued") return `queued for ${seconds(now - created)}`;
  if (!FINAL.has(build.status)) {
    return started ? `running for ${seconds(now - started)}` : "";
  }
  if (!started || !logged) return "never ran";
  const waited = started - created >= 1000 ? ` after ${seconds(started - created)} in the queue` : "";
  return `took ${seconds(Date.parse(build.ended) - started)}${waited}`;
}

function setFavicon(status) {
  const colour = STATE_COLOURS[status] || STATE_COLOURS.cancelled;
  const shape = FINAL.has(status)
    ? `<circle cx="8" cy="8" r="7" fill="${colour}"/>`
    : `<circle cx="8" cy="8" r="5.5" fill="none" stroke="${colour}" stroke-width="3"/>`;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">${shape}</svg>`;
  const link = document.getElementById("favicon");
  link.href = "data:image/svg+xml," + encodeURIComponent(svg);
  link.dataset.state = status;
}

function buildPage() {
  const id = Number(document.body.dataset.buildId);
  const log = document.getElementById("log");
  const follow = document.getElementById("follow");
  const showTimes = document.getElementById("times");
  const page = {
    build: null,
    started: null,     // ms, when the build started
    first: 1,          // number of the first row shown
    next: 1,           // number of the line after the last row shown
    mode: "tail",      // "tail": the end of the log, growing live; "window": lines around one line
    loading: 0,        // loads under way; live lines wait meanwhile
    pending: [],       // live lines not shown yet: {seq, lines, time}
    frame: false,      // a flush is scheduled for the next frame
    sections: [],
    stack: [],         // sections open at the last row
    selected: null,    // [from, to] of the permalink
    search: { query: "", lines: [], total: 0, at: -1 },
  };
  window.autobuilderPage = page; // for tests and the curious
  window.autobuilderCspViolations = [];
  document.addEventListener("securitypolicyviolation", (e) => window.autobuilderCspViolations.push(e.violatedDirective));

  // ---------- rows and sections ----------

  function elapsed(time) {
    return time && page.started ? clock(time - page.started) : "";
  }

  function makeRow(seq, text, time) {
    const row = el("div", { className: "line", "data-seq": seq });
    row.appendChild(el("a", { className: "number", href: `#L${seq}`, text: String(seq) }));
    row.appendChild(el("span", { className: "time", text: elapsed(time) }));
    if (time) row.dataset.time = String(time);
    const marker = parseMarker(text);
    let section = null;
    if (marker && marker.kind === "start") {
      if (marker.phase) endSections(0, seq - 1, time); // a phase ends every section before it
      section = {
        index: page.sections.length, row, name: marker.name, phase: marker.phase, collapsed: marker.collapsed,
        start: time || marker.ts, end: null, ended: false,
      };
      row.sections = page.stack.map((s) => s.index);
      page.sections.push(section);
      page.stack.push(section);
      row.classList.add("section-header");
      row.dataset.section = String(section.index);
      const toggle = el("button", { type: "button", className: "toggle", "aria-label": "collapse or expand this section" });
      row.appendChild(toggle);
      row.appendChild(renderLine(marker.title === null ? text : marker.title));
      row.appendChild(el("span", { className: "took" }));
      showSection(section);
    } else {
      row.sections = page.stack.map((s) => s.index);
      row.appendChild(renderLine(text));
      if (marker && marker.kind === "end") {
        row.classList.add("section-end");
        let depth = page.stack.length;
        while (depth > 0 && (page.stack[depth - 1].phase || (marker.name && page.stack[depth - 1].name !== marker.name))) depth--;
        if (depth > 0) endSections(depth - 1, seq, time || marker.ts);
      }
    }
    row.hidden = row.sections.some((index) => page.sections[index].collapsed);
    return row;
  }

  // Ends the open sections from `depth` up, at line `seq`.
  function endSections(depth, seq, time) {
    while (page.stack.length > depth) {
      const section = page.stack.pop();
      section.ended = true;
      if (time) section.end = time;
      showSection(section);
    }
  }

  function showSection(section) {
    const toggle = section.row.querySelector(".toggle");
    toggle.textContent = section.collapsed ? "▸" : "▾";
    toggle.setAttribute("aria-expanded", String(!section.collapsed));
    section.row.classList.toggle("collapsed", section.collapsed);
    let end = section.end;
    if (!section.ended) {
      const last = log.lastElementChild && Number(log.lastElementChild.dataset.time);
      end = last || (page.build && page.build.ended ? Date.parse(page.build.ended) : null);
    }
    section.row.querySelector(".took").textContent = section.start && end ? seconds(end - section.start) : "";
  }

  function setCollapsed(section, collapsed) {
    section.collapsed = collapsed;
    showSection(section);
    for (let row = section.row.nextElementSibling; row && row.sections.includes(section.index); row = row.nextElementSibling) {
      row.hidden = row.sections.some((index) => page.sections[index].collapsed);
    }
  }

  function rowOf(seq) {
    if (seq < page.first || seq >= page.next) return null;
    const guess = log.children[seq - page.first];
    return guess && Number(guess.dataset.seq) === seq ? guess : log.querySelector(`.line[data-seq="${seq}"]`);
  }

  // Shows this row: expands the sections around it.
  function reveal(row) {
    for (const index of row.sections) if (page.sections[index].collapsed) setCollapsed(page.sections[index], false);
  }

  function clearRows(first) {
    log.replaceChildren();
    page.sections = [];
    page.stack = [];
    page.first = page.next = first;
  }

  function appendRows(seq, lines, times) {
    if (seq > page.next && log.childElementCount) return; // not next to the rows shown
    const fragment = document.createDocumentFragment();
    // Rows already on the page are skipped.
    for (let i = Math.max(0, page.next - seq); i < lines.length; i++) {
      fragment.appendChild(makeRow(seq + i, lines[i], times[i]));
    }
    log.appendChild(fragment);
    page.next = Math.max(page.next, seq + lines.length);
    while (log.childElementCount > WINDOW_LINES) {
      log.firstElementChild.remove();
      page.first++;
    }
    for (const section of page.stack) showSection(section);
    showNotices();
  }

  function showNotices() {
    const earlier = document.getElementById("earlier");
    earlier.hidden = page.mode !== "tail" || page.first <= 1;
    earlier.querySelector("span").textContent = String(page.first - 1);
    const bar = document.getElementById("window");
    bar.hidden = page.mode !== "window";
    document.getElementById("window-range").textContent = `${page.first}–${page.next - 1}`;
  }

  // ---------- loading lines ----------

  async function fetchLines(query) {
    const response = await fetch(`/build/${id}/log/lines?${query}`, { cache: "no-store" });
    if (response.status === 404) return { first: 1, lines: [], times: [], total: 0 };
    if (!response.ok) throw new Error(`lines: ${response.status}`);
    return response.json();
  }

  async function loading(work) {
    page.loading++;
    try {
      return await work();
    } finally {
      page.loading--;
      scheduleFlush();
    }
  }

  // The end of the log, followed live from there.
  function loadTail() {
    return loading(async () => {
      const tail = await fetchLines(`tail=${WINDOW_LINES}`);
      page.mode = "tail";
      clearRows(tail.first);
      appendRows(tail.first, tail.lines, tail.times);
      if (follow.checked) scrollToEnd();
    });
  }

  // The lines around `from`..`to`, outside the tail.
  function loadWindow(from, to) {
    return loading(async () => {
      const first = Math.max(1, from - AROUND);
      const count = Math.min(MAX_FETCH, to - first + 1 + AROUND);
      const window = await fetchLines(`from=${first}&count=${count}`);
      page.mode = "window";
      follow.checked = false;
      clearRows(window.first);
      appendRows(window.first, window.lines, window.times);
    });
  }

  // The lines after the last row, from the server (after a gap in the live lines).
  function catchUp() {
    if (page.mode !== "tail") return Promise.resolve();
    return loading(async () => {
      for (;;) {
        const more = await fetchLines(`from=${page.next}&count=${MAX_FETCH}`);
        if (page.mode !== "tail") return;
        appendRows(more.first, more.lines, more.times);
        if (more.lines.length < MAX_FETCH) return;
      }
    });
  }

  function scheduleFlush() {
    if (page.frame) return;
    page.frame = true;
    requestAnimationFrame(flush);
  }

  // Shows the live lines received since the last frame, at most once a frame.
  function flush() {
    page.frame = false;
    if (page.loading) return;
    if (page.mode !== "tail") {
      page.pending = [];
      return;
    }
    const batches = page.pending;
    page.pending = [];
    for (const batch of batches) {
      if (batch.seq > page.next) {
        catchUp();   // lines were missed: the server has them
        return;
      }
      appendRows(batch.seq, batch.lines, batch.lines.map(() => batch.time));
    }
    if (batches.length && follow.checked) scrollToEnd();
  }

  function scrollToEnd() {
    log.scrollTop = log.scrollHeight;
  }

  // ---------- permalinks, search ----------

  // Scrolls `row` into view, and again over the next frames: rows off screen are laid out at an
  // estimated height (content-visibility), so those rendered on the way move it a little.
  function scrollToRow(row, block) {
    let frames = 3;
    const scroll = () => {
      row.scrollIntoView({ block });
      if (--frames > 0) requestAnimationFrame(scroll);
    };
    scroll();
  }

  // Makes line `from` (to `to`) shown, loading its window when it is not on the page.
  async function showLines(from, to) {
    if (from < page.first || from >= page.next) {
      await loadWindow(from, to);
    }
    const row = rowOf(from);
    if (!row) return null;
    for (let seq = from; seq <= to; seq++) {
      const each = rowOf(seq);
      if (each) reveal(each);
    }
    follow.checked = false;
    scrollToRow(row, from === to ? "center" : "start");
    return row;
  }

  async function select(from, to) {
    page.selected = [from, to];
    for (const row of log.querySelectorAll(".line.selected")) row.classList.remove("selected");
    await showLines(from, to);
    for (let seq = from; seq <= to; seq++) rowOf(seq)?.classList.add("selected");
  }

  function fromHash() {
    const m = /^#L(\d+)(?:-L(\d+))?$/.exec(location.hash);
    if (!m) return null;
    const a = Number(m[1]);
    const b = m[2] ? Number(m[2]) : a;
    return [Math.min(a, b), Math.max(a, b)];
  }

  log.addEventListener("click", (event) => {
    const number = event.target.closest("a.number");
    if (number) {
      event.preventDefault();
      const seq = Number(number.closest(".line").dataset.seq);
      const anchor = event.shiftKey && page.selected ? page.selected[0] : seq;
      const [from, to] = [Math.min(anchor, seq), Math.max(anchor, seq)];
      history.replaceState(null, "", from === to ? `#L${from}` : `#L${from}-L${to}`);
      select(from, to);
      return;
    }
    const toggle = event.target.closest(".toggle");
    if (toggle) {
      const section = page.sections[Number(toggle.closest(".line").dataset.section)];
      setCollapsed(section, !section.collapsed);
    }
  });
  window.addEventListener("hashchange", () => {
    const range = fromHash();
    if (range) select(range[0], range[1]);
  });

  const searchBox = document.getElementById("search");
  const searchCount = document.getElementById("search-count");
  let searchTimer = null;

  async function runSearch() {
    const query = searchBox.value;
    const search = page.search;
    search.query = query;
    if (!query) {
      Object.assign(search, { lines: [], total: 0, at: -1 });
      searchCount.textContent = "";
      for (const row of log.querySelectorAll(".line.hit")) row.classList.remove("hit");
      return;
    }
    const found = await getJson(`/build/${id}/log/search?q=${encodeURIComponent(query)}`);
    if (search.query !== query) return; // a newer search
    Object.assign(search, { lines: found.lines, total: found.total, at: -1 });
    if (found.total === 0) {
      searchCount.textContent = "no match";
      return;
    }
    await goToHit(0);
  }

  async function goToHit(at) {
    const search = page.search;
    if (!search.lines.length) return;
    search.at = (at + search.lines.length) % search.lines.length;
    const line = search.lines[search.at];
    const more = search.total > search.lines.length ? ` (the first ${search.lines.length} can be visited)` : "";
    searchCount.textContent = `${search.at + 1} of ${search.total}${more}`;
    for (const row of log.querySelectorAll(".line.hit")) row.classList.remove("hit");
    const row = await showLines(line, line);
    if (row) row.classList.add("hit");
  }

  document.getElementById("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (page.search.query === searchBox.value && page.search.lines.length) goToHit(page.search.at + 1);
    else runSearch();
  });
  searchBox.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, 300);
  });
  document.getElementById("search-next").addEventListener("click", () => goToHit(page.search.at + 1));
  document.getElementById("search-prev").addEventListener("click", () => goToHit(page.search.at - 1));
  document.getElementById("to-end").addEventListener("click", async () => {
    follow.checked = true;
    await loadTail();
    scrollToEnd();
  });
  follow.addEventListener("change", () => {
    if (!follow.checked) return;
    if (page.mode === "tail") scrollToEnd();
    else loadTail().then(scrollToEnd);
  });
  showTimes.addEventListener("change", () => log.classList.toggle("show-times", showTimes.checked));
  // The reader scrolling up (wheel, keys, the scroll bar) stops following; back at the end, it
  // follows again. Scrolls the page makes itself (and rows taking their real height) do neither.
  let pointerDown = false;
  log.addEventListener("pointerdown", () => { pointerDown = true; });
  window.addEventListener("pointerup", () => { pointerDown = false; });
  log.addEventListener("wheel", (event) => { if (event.deltaY < 0) follow.checked = false; }, { passive: true });
  log.addEventListener("keydown", (event) => {
    if (["ArrowUp", "PageUp", "Home"].includes(event.key)) follow.checked = false;
  });
  log.addEventListener("scroll", () => {
    if (page.mode !== "tail" || page.loading) return;
    if (log.scrollTop + log.clientHeight >= log.scrollHeight - 4) follow.checked = true;
    else if (pointerDown) follow.checked = false;
  });
  // The log's height changes with the header above it (a reason, the other scripts): keep the end.
  new ResizeObserver(() => {
    if (follow.checked && page.mode === "tail") scrollToEnd();
  }).observe(log);

  // ---------- the build's state ----------

  function renderHeader(build) {
    page.build = build;
    page.started = build.started ? Date.parse(build.started) : null;
    // Asked to stop (GET /build/<id> says so, or the websocket's "stopping" came): it is in its
    // stop grace period until its status is final.
    if (build.stopping && !FINAL.has(build.status)) page.stopping = build.stopping;
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
    if (page.stopping && !FINAL.has(build.status)) showStopping();
    else {
      document.getElementById("status").replaceChildren(badge(build.status));
      setFavicon(build.status);
    }
    tick();
    if (build.status === "queued") showWaiting();
    else document.getElementById("waiting").hidden = true;
  }

  function tick() {
    if (page.build) document.getElementById("duration").textContent = durationLabel(page.build, Date.now(), page.next > 1);
  }

  function showStopping() {
    const status = el("span", { className: "badge cancelling", text: "cancelling…", title: page.stopping });
    document.getElementById("status").replaceChildren(status);
    setFavicon("cancelling");
  }

  // A queued build says why it waits.
  async function showWaiting() {
    const waiting = document.getElementById("waiting");
    const response = await fetch(`/build/${id}/queue`, { cache: "no-store" });
    if (!response.ok || page.build.status !== "queued") return;
    const queue = await response.json();
    const ahead = queue.ahead === 0 ? "next in the queue" : `number ${queue.place} in the queue, ${queue.ahead} ahead of it`;
    waiting.textContent = `Waiting to start: ${ahead}; ${queue.reason}.`;
    waiting.hidden = false;
  }

  // The other scripts of the same push (same repository, branch and commit).
  const siblings = new Map();
  function showSiblings() {
    const list = document.getElementById("siblings");
    const builds = [...siblings.values()].sort((a, b) => a.id - b.id);
    list.replaceChildren(...builds.flatMap((b) => [
      el("a", { href: `/monitor/build/${b.id}`, text: `#${b.id} ${b.script}` }), document.createTextNode(" "), badge(b.status), document.createTextNode(" "),
    ]));
    list.hidden = builds.length === 0;
    document.querySelector('dt[data-for="siblings"]').hidden = list.hidden;
  }
  function samePush(other) {
    const build = page.build;
    return build && other.id !== build.id && other.commit === build.commit && other.repository === build.repository
      && other.branch === build.branch && other.script;
  }
  async function loadSiblings(build) {
    const query = new URLSearchParams({ repository: build.repository, branch: build.branch, limit: "200" });
    for (const other of await getJson(`/build/history?${query}`)) if (samePush(other)) siblings.set(other.id, other);
    showSiblings();
  }

  // A failed build opens on the section that failed: expanded and in view, the others collapsed.
  function openOnFailure() {
    const build = page.build;
    if (!(build.status === "failure" || build.status === "error") || !page.sections.length) return;
    const last = log.lastElementChild;
    const failed = last.sections.length ? page.sections[last.sections[last.sections.length - 1]] : page.sections[page.sections.length - 1];
    const keep = new Set([failed.index, ...failed.row.sections]);
    for (const section of page.sections) setCollapsed(section, !keep.has(section.index));
    follow.checked = false;
    failed.row.classList.add("failed");
    scrollToRow(failed.row, "start");
  }

  async function open() {
    renderHeader(await getJson(`/build/${id}`));
    loadSiblings(page.build);
    const connection = new LiveConnection(websocketUrl(), {
      build: (build) => {
        if (samePush(build)) {
          siblings.set(build.id, build);
          showSiblings();
        }
        if (build.id !== id) return;
        renderHeader(build);
        if (FINAL.has(build.status)) catchUp();
      },
      lines: (buildId, seq, lines, time) => {
        if (buildId !== id) return;
        page.pending.push({ seq, lines, time });
        scheduleFlush();
      },
      // Asked to stop: it has its grace period to end.
      stopping: (buildId, reason) => {
        if (buildId !== id || FINAL.has(page.build.status)) return;
        page.stopping = reason;
        showStopping();
      },
      resync: async () => {
        renderHeader(await getJson(`/build/${id}`));
        catchUp();
      },
    });
    window.autobuilderLive = connection;
    connection.subscribe(id, 0); // live lines from now on; the ones before come from the server
    await loadTail();
    tick();
    const range = fromHash();
    if (range) await select(range[0], range[1]);
    else if (FINAL.has(page.build.status)) openOnFailure();
    page.openedAt = performance.now(); // since the navigation started
    document.body.dataset.opened = "true";
  }

  setInterval(tick, 1000);
  open();
}

buildPage();
