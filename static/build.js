// autobuilder: one build page, /monitor/build/<id>. Needs common.js.
//
// The page loads a window of the log (at most WINDOW_LINES lines): the tail, growing live, or the
// lines around one line opened by a permalink (#L120, #L120-L140) or a search hit. Lines come from
// GET /build/<id>/log/lines (with the time each arrived, and the headers of the sections open at
// its first line) and, live, from the websocket; a gap between the two is filled from the server.
// Only the rows in view (and MARGIN more on each side) are in the DOM: a spacer as tall as every
// line shown makes the scroll bar, all rows have the same height (--row in build.css), and rows
// leaving the view are reused for the ones entering it. Sections come from the markers scripts print:
// GitHub Actions `::group::title` / `::endgroup::`, GitLab `section_start:<ts>:<name>[collapsed=true]
// \r\e[0K<title>` / `section_end:<ts>:<name>`, and autobuilder's own phase notes
// `[autobuilder] phase <name>` (each phase lasts until the next).
"use strict";

const WINDOW_LINES = 5000;   // lines loaded at once
const MARGIN = 30;           // rows kept in the DOM above and below the ones in view
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
    first: 1,          // number of the first line loaded
    next: 1,           // number of the line after the last one loaded
    lines: [],         // the loaded lines, `first` to `next - 1`: {seq, text, time, sections, section, end}
    shown: [],         // what the list shows, in order: headers of the sections around the first
                       // line loaded, then the loaded lines, without those in collapsed sections
    changed: true,     // `shown` is to be made again
    mode: "tail",      // "tail": the end of the log, growing live; "window": lines around one line
    loading: 0,        // loads under way; live lines wait meanwhile
    pending: [],       // live lines not shown yet: {seq, lines, time}
    frame: false,      // a flush is scheduled for the next frame
    sections: [],      // {index, header (its line), name, phase, collapsed, start, end, ended}
    stack: [],         // sections open after the last line loaded
    enclosing: [],     // their indexes (shared by the lines between two markers)
    selected: null,    // [from, to] of the permalink
    search: { query: "", lines: [], total: 0, at: -1, line: null },
  };
  window.autobuilderPage = page; // for tests and the curious
  window.autobuilderCspViolations = [];
  document.addEventListener("securitypolicyviolation", (e) => window.autobuilderCspViolations.push(e.violatedDirective));

  // ---------- lines and sections ----------

  function elapsed(time) {
    return time && page.started ? clock(time - page.started) : "";
  }

  function openSection(section) {
    page.stack.push(section);
    page.enclosing = page.stack.map((s) => s.index);
  }

  // Ends the open sections from `depth` up.
  function endSections(depth, time) {
    while (page.stack.length > depth) {
      const section = page.stack.pop();
      section.ended = true;
      if (time) section.end = time;
    }
    page.enclosing = page.stack.map((s) => s.index);
  }

  // One line of the log, read for its section marker.
  function makeLine(seq, text, time) {
    const line = { seq, text, time, sections: page.enclosing, section: -1, end: false };
    const marker = parseMarker(text);
    if (marker && marker.kind === "start") {
      if (marker.phase) endSections(0, time); // a phase ends every section before it
      line.sections = page.enclosing;
      line.title = marker.title === null ? text : marker.title;
      const section = {
        index: page.sections.length, header: line, name: marker.name, phase: marker.phase, collapsed: marker.collapsed,
        start: time || marker.ts, end: null, ended: false,
      };
      line.section = section.index;
      page.sections.push(section);
      openSection(section);
    } else if (marker && marker.kind === "end") {
      line.end = true;
      let depth = page.stack.length;
      while (depth > 0 && (page.stack[depth - 1].phase || (marker.name && page.stack[depth - 1].name !== marker.name))) depth--;
      if (depth > 0) endSections(depth - 1, time || marker.ts);
    }
    return line;
  }

  const hidden = (line) => line.sections.some((index) => page.sections[index].collapsed);

  // The shown lines, made again after lines came or went, or a section was collapsed or expanded.
  // The headers of sections that began before the first loaded line come first.
  function shownLines() {
    if (page.changed) {
      const first = page.lines[0];
      const outer = first ? first.sections.map((index) => page.sections[index].header).filter((h) => h.seq < page.first) : [];
      page.shown = outer.concat(page.lines).filter((line) => !hidden(line));
      page.changed = false;
    }
    return page.shown;
  }

  // The place of line `seq` in the shown lines (they are in order), or of the next one shown.
  function placeOf(seq) {
    const shown = shownLines();
    let [low, high] = [0, shown.length];
    while (low < high) {
      const middle = (low + high) >> 1;
      if (shown[middle].seq < seq) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  function lineOf(seq) {
    if (seq >= page.first && seq < page.next) return page.lines[seq - page.first];
    return page.sections.find((s) => s.header.seq === seq)?.header ?? null;
  }

  function setCollapsed(section, collapsed) {
    section.collapsed = collapsed;
    page.changed = true;
  }

  // Shows this line: expands the sections around it.
  function reveal(line) {
    for (const index of line.sections) if (page.sections[index].collapsed) setCollapsed(page.sections[index], false);
  }

  function clearLines(first) {
    page.lines = [];
    page.sections = [];
    page.stack = [];
    page.enclosing = [];
    page.first = page.next = first;
    page.changed = true;
  }

  // Adds lines after the last one loaded; the window keeps its last WINDOW_LINES lines.
  function appendLines(seq, texts, times) {
    if (seq > page.next && page.lines.length) return; // not next to the lines loaded
    // Lines already loaded are skipped.
    for (let i = Math.max(0, page.next - seq); i < texts.length; i++) {
      page.lines.push(makeLine(seq + i, texts[i], times[i]));
    }
    page.next = Math.max(page.next, seq + texts.length);
    if (page.lines.length > WINDOW_LINES) {
      const extra = page.lines.length - WINDOW_LINES;
      page.lines.splice(0, extra);
      page.first += extra;
    }
    page.changed = true;
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

  // ---------- the rows in view ----------

  const spacer = el("div", { className: "spacer" });
  const rows = el("div", { className: "rows" });
  spacer.appendChild(rows);
  log.replaceChildren(spacer);
  const ROW = parseFloat(getComputedStyle(log).getPropertyValue("--row")) || 17;
  const rendered = new Map(); // line -> its row
  const spare = [];           // rows out of view, to reuse
  let viewHeight = log.clientHeight;

  function makeRow() {
    const row = el("div", { className: "line" });
    row.parts = {
      number: el("a", { className: "number" }),
      time: el("span", { className: "time" }),
      toggle: el("button", { type: "button", className: "toggle", "aria-label": "collapse or expand this section" }),
      took: el("span", { className: "took" }),
    };
    return row;
  }

  // Fills a row with a line.
  function fill(row, line) {
    const { number, time, toggle, took } = row.parts;
    row.line = line;
    row.dataset.seq = String(line.seq);
    number.href = `#L${line.seq}`;
    number.textContent = String(line.seq);
    time.textContent = elapsed(line.time);
    if (line.section >= 0) row.replaceChildren(number, time, toggle, renderLine(line.title), took);
    else row.replaceChildren(number, time, renderLine(line.text));
  }

  // What changes on a row without its line changing: highlights, a section's state and duration.
  function decorate(row) {
    const line = row.line;
    const section = line.section >= 0 ? page.sections[line.section] : null;
    const [from, to] = page.selected || [0, -1];
    let names = "line";
    if (line.seq >= from && line.seq <= to) names += " selected";
    if (line.seq === page.search.line) names += " hit";
    if (line.end) names += " section-end";
    if (section) names += " section-header" + (section.collapsed ? " collapsed" : "") + (section.failed ? " failed" : "");
    if (row.className !== names) row.className = names;
    if (!section) return;
    const { toggle, took } = row.parts;
    const arrow = section.collapsed ? "▸" : "▾";
    if (toggle.textContent !== arrow) {
      toggle.textContent = arrow;
      toggle.setAttribute("aria-expanded", String(!section.collapsed));
    }
    let end = section.end;
    if (!section.ended) {
      const last = page.lines[page.lines.length - 1];
      end = (last && last.time) || (page.build && page.build.ended ? Date.parse(page.build.ended) : null);
    }
    const duration = section.start && end ? seconds(end - section.start) : "";
    if (took.textContent !== duration) took.textContent = duration;
  }

  // The spacer as tall as the lines shown; those lines.
  function sizeSpacer() {
    const shown = shownLines();
    const height = `${shown.length * ROW}px`;
    if (spacer.style.height !== height) spacer.style.height = height;
    return shown;
  }

  // Puts in the DOM the rows of the lines in view, MARGIN more on each side, in order.
  function render() {
    const shown = sizeSpacer();
    const top = log.scrollTop;
    const start = Math.max(0, Math.floor(top / ROW) - MARGIN);
    const end = Math.min(shown.length, Math.ceil((top + viewHeight) / ROW) + MARGIN);
    const wanted = new Set(shown.slice(start, end));
    for (const [line, row] of rendered) {
      if (wanted.has(line)) continue;
      rendered.delete(line);
      row.remove();
      spare.push(row);
    }
    let previous = null;
    for (let i = start; i < end; i++) {
      const line = shown[i];
      let row = rendered.get(line);
      if (!row) {
        row = spare.pop() || makeRow();
        fill(row, line);
        rendered.set(line, row);
      }
      decorate(row);
      const place = previous ? previous.nextSibling : rows.firstChild;
      if (row !== place) rows.insertBefore(row, place);
      previous = row;
    }
    rows.style.transform = `translateY(${start * ROW}px)`;
  }

  // The row of line `seq` when it is in the DOM.
  function rowOf(seq) {
    const line = lineOf(seq);
    return line ? rendered.get(line) || null : null;
  }

  function scrollToEnd() {
    log.scrollTop = sizeSpacer().length * ROW; // the browser stops at the end
    render();
  }

  // Scrolls line `seq` into view: in the centre, or at the top ("start").
  function scrollToLine(seq, block) {
    const place = placeOf(seq);
    sizeSpacer();
    log.scrollTop = block === "center" ? place * ROW - (viewHeight - ROW) / 2 : place * ROW;
    render();
  }

  // Shows changes to the lines; keeps the line at the top of the view where it was, unless
  // following the end.
  function update() {
    if (follow.checked && page.mode === "tail") return scrollToEnd();
    const before = page.shown[Math.floor(log.scrollTop / ROW)];
    const offset = log.scrollTop % ROW;
    if (before && page.changed) {
      const place = placeOf(before.seq);
      sizeSpacer();
      log.scrollTop = place * ROW + offset;
    }
    render();
  }

  // ---------- loading lines ----------

  async function fetchLines(query) {
    const response = await fetch(`/build/${id}/log/lines?${query}`, { cache: "no-store" });
    if (response.status === 404) return { first: 1, lines: [], times: [], total: 0, open: [] };
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

  // Replaces the lines loaded with these: the headers of the sections open at their first line
  // (they began before it), then the lines.
  function loadLines(window) {
    clearLines(window.first);
    for (const header of window.open || []) makeLine(header.line, header.text, header.time);
    appendLines(window.first, window.lines, window.times);
  }

  // The end of the log, followed live from there.
  function loadTail() {
    return loading(async () => {
      const tail = await fetchLines(`tail=${WINDOW_LINES}`);
      page.mode = "tail";
      loadLines(tail);
      if (follow.checked) scrollToEnd();
      else render();
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
      loadLines(window);
      render();
    });
  }

  // The lines after the last one loaded, from the server (after a gap in the live lines).
  function catchUp() {
    if (page.mode !== "tail") return Promise.resolve();
    return loading(async () => {
      for (;;) {
        const more = await fetchLines(`from=${page.next}&count=${MAX_FETCH}`);
        if (page.mode !== "tail") return;
        appendLines(more.first, more.lines, more.times);
        update();
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
      appendLines(batch.seq, batch.lines, batch.lines.map(() => batch.time));
    }
    if (batches.length) update();
  }

  // ---------- permalinks, search ----------

  // Makes line `from` (to `to`) shown and in view, loading its window when it is not loaded.
  async function showLines(from, to) {
    if (from < page.first || from >= page.next) {
      await loadWindow(from, to);
    }
    const line = lineOf(from);
    if (!line) return null;
    for (let seq = from; seq <= to; seq++) {
      const each = lineOf(seq);
      if (each) reveal(each);
    }
    follow.checked = false;
    scrollToLine(from, from === to ? "center" : "start");
    return line;
  }

  async function select(from, to) {
    page.selected = [from, to];
    render();
    await showLines(from, to);
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
      const seq = number.closest(".line").line.seq;
      const anchor = event.shiftKey && page.selected ? page.selected[0] : seq;
      const [from, to] = [Math.min(anchor, seq), Math.max(anchor, seq)];
      history.replaceState(null, "", from === to ? `#L${from}` : `#L${from}-L${to}`);
      select(from, to);
      return;
    }
    const toggle = event.target.closest(".toggle");
    if (toggle) {
      const section = page.sections[toggle.closest(".line").line.section];
      setCollapsed(section, !section.collapsed);
      follow.checked = false; // the reader looks at this section
      update();
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
      Object.assign(search, { lines: [], total: 0, at: -1, line: null });
      searchCount.textContent = "";
      render();
      return;
    }
    const found = await getJson(`/build/${id}/log/search?q=${encodeURIComponent(query)}`);
    if (search.query !== query) return; // a newer search
    Object.assign(search, { lines: found.lines, total: found.total, at: -1, line: null });
    if (found.total === 0) {
      searchCount.textContent = "no match";
      render();
      return;
    }
    await goToHit(0);
  }

  async function goToHit(at) {
    const search = page.search;
    if (!search.lines.length) return;
    search.at = (at + search.lines.length) % search.lines.length;
    search.line = search.lines[search.at];
    const more = search.total > search.lines.length ? ` (the first ${search.lines.length} can be visited)` : "";
    searchCount.textContent = `${search.at + 1} of ${search.total}${more}`;
    render();
    await showLines(search.line, search.line);
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
  // follows again. Scrolls the page makes itself do neither.
  let pointerDown = false;
  log.addEventListener("pointerdown", () => { pointerDown = true; });
  window.addEventListener("pointerup", () => { pointerDown = false; });
  log.addEventListener("wheel", (event) => { if (event.deltaY < 0) follow.checked = false; }, { passive: true });
  log.addEventListener("keydown", (event) => {
    if (["ArrowUp", "PageUp", "Home"].includes(event.key)) follow.checked = false;
  });
  log.addEventListener("scroll", () => {
    render();
    if (page.mode !== "tail" || page.loading) return;
    if (log.scrollTop + viewHeight >= log.scrollHeight - 4) follow.checked = true;
    else if (pointerDown) follow.checked = false;
  });
  // The log's height changes with the window and the header above it (a reason, the other
  // scripts): more or fewer rows, and the end kept in view when following.
  new ResizeObserver(() => {
    viewHeight = log.clientHeight;
    if (follow.checked && page.mode === "tail") scrollToEnd();
    else render();
  }).observe(log);

  // For the tests: whether line `seq` is loaded and not inside a collapsed section.
  page.isShown = (seq) => {
    const line = lineOf(seq);
    return Boolean(line) && !hidden(line);
  };
  page.rowOf = rowOf;

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
    const last = page.lines[page.lines.length - 1];
    const failed = last && last.sections.length ? page.sections[last.sections[last.sections.length - 1]] : page.sections[page.sections.length - 1];
    const keep = new Set([failed.index, ...failed.header.sections]);
    for (const section of page.sections) setCollapsed(section, !keep.has(section.index));
    follow.checked = false;
    failed.failed = true;
    scrollToLine(failed.header.seq, "start");
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
