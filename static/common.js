// autobuilder live monitor, shared by every page: ANSI rendering, the live websocket, small DOM
// helpers. No framework, no CDN. Build output is untrusted: it only ever reaches the page through
// textContent.
"use strict";

// ---------- ANSI rendering ----------

const ESCAPES = /\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;

// Terminal semantics of a carriage return: what was written after the last one is what shows.
function collapseCarriageReturns(text) {
  if (!text.includes("\r")) return text;
  const parts = text.split("\r").filter((part) => part.length > 0);
  return parts.length ? parts[parts.length - 1] : "";
}

function applySgr(state, params) {
  const codes = params === "" ? [0] : params.split(";").map((p) => parseInt(p, 10) || 0);
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) Object.assign(state, { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false });
    else if (c === 1) state.bold = true;
    else if (c === 2) state.dim = true;
    else if (c === 3) state.italic = true;
    else if (c === 4) state.underline = true;
    else if (c === 22) state.bold = state.dim = false;
    else if (c === 23) state.italic = false;
    else if (c === 24) state.underline = false;
    else if (c >= 30 && c <= 37) state.fg = "c" + (c - 30);
    else if (c >= 90 && c <= 97) state.fg = "c" + (c - 90 + 8);
    else if (c === 39) state.fg = null;
    else if (c >= 40 && c <= 47) state.bg = "c" + (c - 40);
    else if (c >= 100 && c <= 107) state.bg = "c" + (c - 100 + 8);
    else if (c === 49) state.bg = null;
    else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
      const n = codes[i + 2] ?? 0;
      state[c === 38 ? "fg" : "bg"] = n < 16 ? "c" + n : "x" + n;
      i += 2;
    } else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
      const [r, g, b] = codes.slice(i + 2, i + 5).map((v) => Math.max(0, Math.min(255, v || 0)));
      state[c === 38 ? "fg" : "bg"] = `rgb(${r},${g},${b})`;
      i += 4;
    }
  }
}

function xterm256(n) {
  if (n < 232) {
    const v = [0, 95, 135, 175, 215, 255];
    n -= 16;
    return `rgb(${v[Math.floor(n / 36)]},${v[Math.floor(n / 6) % 6]},${v[n % 6]})`;
  }
  const grey = 8 + (n - 232) * 10;
  return `rgb(${grey},${grey},${grey})`;
}

function styledSpan(text, state) {
  const span = document.createElement("span");
  span.textContent = text;
  for (const [key, prop] of [["fg", "color"], ["bg", "backgroundColor"]]) {
    const value = state[key];
    if (!value) continue;
    if (value.startsWith("c")) span.classList.add(key + "-" + value.slice(1));
    else span.style[prop] = value.startsWith("x") ? xterm256(parseInt(value.slice(1), 10)) : value;
  }
  for (const flag of ["bold", "dim", "italic", "underline"]) if (state[flag]) span.classList.add(flag);
  return span;
}

// One line of output as DOM nodes: SGR colours kept, every other escape and control dropped.
function renderLine(raw) {
  const text = collapseCarriageReturns(raw);
  const line = document.createElement("span");
  line.className = "text";
  const state = { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false };
  let last = 0;
  const emit = (chunk) => {
    const clean = chunk.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");
    if (clean) line.appendChild(styledSpan(clean, state));
  };
  for (const match of text.matchAll(ESCAPES)) {
    emit(text.slice(last, match.index));
    if (match[2] === "m") applySgr(state, match[1]);
    last = match.index + match[0].length;
  }
  emit(text.slice(last));
  return line;
}

// ---------- the websocket ----------

// Connects, reconnects by itself, and re-subscribes each build from the next line it lacks.
class LiveConnection {
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.subscriptions = new Map(); // build id -> {next, tail}
    this.retry = 500;
    this.connect();
  }

  connect() {
    this.setState("connecting");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => {
      this.retry = 500;
      this.setState("live");
      for (const [id, sub] of this.subscriptions) this.sendSubscribe(id, sub);
    };
    socket.onmessage = (message) => this.onMessage(JSON.parse(message.data));
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.setState("reconnecting");
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 10000);
    };
  }

  setState(state) {
    const badge = document.getElementById("connection");
    if (badge) {
      badge.textContent = state;
      badge.className = "connection " + state;
    }
    document.body.dataset.connection = state;
  }

  onMessage(msg) {
    if (msg.type === "lines") {
      const sub = this.subscriptions.get(msg.id);
      if (!sub) return;
      let text = msg.text;
      let seq = msg.seq;
      if (sub.next === null) sub.next = seq; // a tail subscription starts where the server says
      // Never show a line twice: skip what an earlier message already brought.
      while (seq < sub.next && text.length) {
        const cut = text.indexOf("\n");
        if (cut < 0) return;
        text = text.slice(cut + 1);
        seq++;
      }
      if (seq !== sub.next || !text.length) return;
      const lines = text.split("\n");
      lines.pop();
      sub.next = seq + lines.length;
      this.handlers.lines(msg.id, seq, lines, msg.time); // time: when they arrived (live lines only)
    } else if (msg.type === "build") {
      this.handlers.build(msg.build);
    } else if (msg.type === "stopping") {
      if (this.handlers.stopping) this.handlers.stopping(msg.id, msg.reason);
    } else if (msg.type === "hello" || msg.type === "resync") {
      this.handlers.resync();
    }
  }

  subscribe(id, tail) {
    if (this.subscriptions.has(id)) return;
    const sub = { next: null, tail };
    this.subscriptions.set(id, sub);
    this.sendSubscribe(id, sub);
  }

  unsubscribe(id) {
    if (!this.subscriptions.delete(id)) return;
    this.send({ type: "unsubscribe", id });
  }

  sendSubscribe(id, sub) {
    if (sub.next === null) this.send({ type: "subscribe", id, tail: sub.tail });
    else this.send({ type: "subscribe", id, from: sub.next });
  }

  send(message) {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  // For tests and for the curious: drop the connection and watch it catch up.
  drop() {
    this.socket.close();
  }
}

function websocketUrl() {
  const configured = document.body.dataset.wsUrl;
  if (configured) return configured;
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/live";
}

// ---------- shared bits ----------

const FINAL = new Set(["success", "failure", "error", "cancelled"]);

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.appendChild(child);
  return node;
}

function badge(status) {
  return el("span", { className: "badge " + status, text: status });
}

function duration(build) {
  if (!build.started) return "";
  const end = build.ended ? Date.parse(build.ended) : Date.now();
  const seconds = Math.max(0, Math.round((end - Date.parse(build.started)) / 1000));
  return seconds < 60 ? `${seconds}s` : `${Math.floor(seconds / 60)}m ${String(seconds % 60).padStart(2, "0")}s`;
}

function tickDurations(builds) {
  for (const node of document.querySelectorAll("[data-duration]")) {
    const build = builds.get(Number(node.dataset.duration));
    if (build) node.textContent = duration(build);
  }
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function appendLines(container, seq, lines, keep) {
  const fragment = document.createDocumentFragment();
  lines.forEach((text, index) => {
    const row = el("div", { className: "line", "data-seq": seq + index });
    row.appendChild(el("span", { className: "number", text: String(seq + index) }));
    row.appendChild(renderLine(text));
    fragment.appendChild(row);
  });
  container.appendChild(fragment);
  let dropped = 0;
  while (container.childElementCount > keep) {
    container.firstElementChild.remove();
    dropped++;
  }
  return dropped;
}

