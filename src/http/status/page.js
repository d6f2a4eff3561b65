// The eddy status page: fetches /admin/status every two seconds. With few
// models the answer holds every model in full, drawn as a card each: a
// summary, a chart of live vs last-good quality over time (SVG) and the
// newest events. With many it holds a page of compact rows, drawn as a
// table (a name prefix filter, previous/next pages); a model's name opens
// its card alone (#model=NAME in the URL, so a reload keeps it), fetched
// with ?model=NAME. Everything the server sends is written as text
// (textContent), never parsed as HTML.
"use strict";

const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const W = 1000, H = 220, PAD = { left: 48, right: 12, top: 10, bottom: 24 };
// Points kept per model, as the server keeps them.
const POINTS_KEPT = 512;
// Rows per page of the table.
const PAGE = 100;
// Each model's history as this page has it: the server sends only points
// newer than `since` (with some overlap, deduplicated by time).
const histories = new Map();
let since = 0;
// The table's pages: the `after` of each page opened with "next", the
// newest last (none: the first page).
const cursors = [];
// The name prefix the table is filtered by ("" for none).
let prefix = "";
// The `next` of the table's page on screen (null: the last page).
let nextCursor = null;
// Bumped whenever what the page shows changes (model, page, filter): an
// answer fetched for something else is dropped, and only the newest
// refresh schedules the next one.
let generation = 0;
let timer = null;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

// The figure the chart follows: accuracy for classifiers, MAE for regression.
function metric(task) {
  return task === "regression"
    ? { key: "mae", label: "MAE (lower is better)" }
    : { key: "accuracy", label: "accuracy" };
}

function fmt(x) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(4);
}

function time(ms) {
  return new Date(ms).toLocaleTimeString();
}

function summary(m) {
  const dl = el("dl", { class: "summary" });
  const q = metric(m.task);
  const items = [
    ["version", m.version],
    ["training", m.training],
    ["queue", m.queue_depth + " / " + m.queue_capacity],
    ["examples trained", m.examples_trained],
    ["last-good", m.last_good_version === null ? "–" : m.last_good_version],
    ["live " + q.key, fmt(m.live[q.key])],
    ["last-good " + q.key, fmt(m.baseline[q.key])],
    ["quarantined", m.quarantined],
  ];
  for (const [k, v] of items) {
    const d = el("div");
    d.append(el("dt", {}, k), el("dd", { "data-field": k, class: k === "training" && v === "paused" ? "paused" : "" }, String(v)));
    dl.append(d);
  }
  return dl;
}

function queueBar(m) {
  const bar = el("div", { class: "queue", title: "queue depth" });
  const share = m.queue_capacity > 0 ? Math.min(1, m.queue_depth / m.queue_capacity) : 0;
  bar.append(el("div", { style: "width:" + (share * 100).toFixed(1) + "%" }));
  return bar;
}

function merge(m) {
  const kept = histories.get(m.name) || [];
  const last = kept.length ? kept[kept.length - 1].at_ms : -1;
  for (const p of m.history) if (p.at_ms > last) kept.push(p);
  kept.splice(0, Math.max(0, kept.length - POINTS_KEPT));
  histories.set(m.name, kept);
  return kept;
}

function chart(m, history) {
  const q = metric(m.task);
  const points = history.filter((p) => p.live !== null && p.live !== undefined);
  const wrap = el("div", { class: "chart-wrap" });
  const legend = el("div", { class: "legend" });
  legend.append(el("span", { class: "l-live" }, "live " + q.label), el("span", { class: "l-baseline" }, "last-good, same examples"), el("span", { class: "l-rollback" }, "rollback"));
  wrap.append(legend);
  if (points.length === 0) {
    wrap.append(el("p", { class: "empty" }, "no labelled examples scored yet"));
    return wrap;
  }
  const s = svg("svg", { class: "chart", viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", "data-points": points.length });
  const t0 = points[0].at_ms, t1 = Math.max(points[points.length - 1].at_ms, t0 + 1);
  const values = [];
  for (const p of points) {
    values.push(p.live);
    if (p.baseline !== null && p.baseline !== undefined) values.push(p.baseline);
  }
  let lo = Math.min(...values), hi = Math.max(...values);
  if (q.key === "accuracy") { lo = Math.max(0, Math.min(lo, hi - 0.05)); hi = Math.min(1, Math.max(hi, lo + 0.05)); }
  if (hi - lo < 1e-9) { hi = lo + 1; }
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * (H - PAD.top - PAD.bottom);
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    s.append(svg("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }));
    const label = svg("text", { x: 4, y: y(v) + 4 });
    label.textContent = v.toFixed(3);
    s.append(label);
  }
  s.append(svg("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }));
  s.append(svg("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
  for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
    const label = svg("text", { x: x(t), y: H - 6, "text-anchor": anchor });
    label.textContent = time(t);
    s.append(label);
  }
  for (const e of m.events) {
    if (e.kind !== "rollback" && e.kind !== "promotion") continue;
    const t = Date.parse(e.at);
    if (!(t >= t0 && t <= t1)) continue;
    s.append(svg("line", { class: "event-" + e.kind, x1: x(t), x2: x(t), y1: PAD.top, y2: H - PAD.bottom }));
  }
  const line = (key, cls) => {
    let d = "";
    for (const p of points) {
      const v = p[key];
      if (v === null || v === undefined) continue;
      d += (d ? " L" : "M") + x(p.at_ms).toFixed(1) + " " + y(v).toFixed(1);
    }
    if (points.length === 1 && d) d += " L" + (W - PAD.right) + " " + d.split(" ")[1];
    if (d) s.append(svg("path", { class: cls, d: d }));
  };
  line("baseline", "baseline");
  line("live", "live");
  wrap.append(s);
  return wrap;
}

function events(m) {
  if (m.events.length === 0) return el("p", { class: "empty" }, "no events");
  const table = el("table", { class: "events" });
  const head = el("tr");
  for (const h of ["when", "event", "version", "why"]) head.append(el("th", {}, h));
  table.append(head);
  for (const e of m.events.slice().reverse()) {
    const row = el("tr", { class: "kind-" + e.kind, "data-kind": e.kind });
    row.append(el("td", {}, time(Date.parse(e.at))), el("td", { class: "kind" }, e.kind.replace(/_/g, " ")), el("td", {}, String(e.version)), el("td", {}, e.reason));
    table.append(row);
  }
  return table;
}

// The model in the URL's fragment (#model=NAME), or null.
function selected() {
  const m = /^#model=(.+)$/.exec(location.hash);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch (e) {
    return null;
  }
}

// The greatest `after` that keeps every name starting with `prefix`: the
// prefix with its last character lowered by one, then "~", which sorts
// after every character a model name may hold (A-Z a-z 0-9 - _ .).
function below(prefix) {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) - 1) + "~";
}

// The `after` of the table's page on screen, or null for the first page
// without a filter (which the server answers in full when models are few).
function pageAfter() {
  if (cursors.length) return cursors[cursors.length - 1];
  return prefix ? below(prefix) : null;
}

function dataUrl(model) {
  const q = new URLSearchParams();
  const after = pageAfter();
  if (model !== null) {
    q.set("model", model);
    q.set("since", since);
  } else if (after !== null) {
    q.set("limit", PAGE);
    q.set("after", after);
  } else {
    q.set("since", since);
  }
  // From the origin: a page opened with credentials in its URL cannot
  // fetch a URL relative to it; the browser sends them as it did for the
  // page.
  return location.origin + "/admin/status?" + q.toString();
}

function card(m) {
  const section = el("section", { class: "model", "data-model": m.name });
  section.append(el("h2", {}, m.name + " (" + m.task + ", " + m.family + ")"), summary(m), queueBar(m), chart(m, merge(m)), events(m));
  return section;
}

function listRow(m) {
  const q = metric(m.task);
  const row = el("tr", { "data-row": m.name });
  const name = el("td");
  name.append(el("a", { href: "#model=" + encodeURIComponent(m.name) }, m.name));
  const cells = [
    [m.task], [m.family], [m.version], [m.training, m.training === "paused" ? "paused" : ""],
    [m.queue_depth + " / " + m.queue_capacity], [m.quarantined], [m.examples_trained],
    [fmt(m.live[q.key]), "", q.label], [fmt(m.baseline[q.key]), "", q.label], [m.rollbacks],
    [m.last_event_at ? time(Date.parse(m.last_event_at)) : "–"],
  ];
  row.append(name);
  for (const [text, cls, title] of cells) {
    const td = el("td", cls ? { class: cls } : {}, String(text));
    if (title) td.title = title;
    row.append(td);
  }
  return row;
}

function table(status) {
  const shown = status.models.filter((m) => m.name.startsWith(prefix));
  // Past the names with the prefix, no later page has any.
  const last = status.models[status.models.length - 1];
  nextCursor = last && last.name.startsWith(prefix) ? status.next : null;
  document.getElementById("count").textContent =
    status.total + " models" + (prefix ? ", " + shown.length + " here start with " + prefix : "") + ", page " + (cursors.length + 1);
  document.getElementById("previous").disabled = cursors.length === 0;
  document.getElementById("next").disabled = nextCursor === null;
  if (shown.length === 0) return [el("p", { class: "empty" }, "no models here")];
  const t = el("table", { class: "list" });
  const head = el("tr");
  for (const h of ["model", "task", "family", "version", "training", "queue", "quarantined", "examples trained", "live", "last-good", "rollbacks", "last event"]) {
    head.append(el("th", {}, h));
  }
  t.append(head, ...shown.map(listRow));
  return [t];
}

function render(status, model) {
  const main = document.getElementById("models");
  const list = model === null && "next" in status;
  document.getElementById("list-tools").hidden = !list;
  document.getElementById("detail-tools").hidden = model === null;
  document.title = model === null ? "eddy status" : model + " – eddy status";
  let children;
  if (list) {
    children = table(status);
    // The rows carry no history: the next cards ask for all of it.
    since = 0;
  } else {
    children = status.models.map(card);
    // Ask again from a little before this answer: a point the sampler was
    // recording meanwhile is not missed (duplicates are dropped by time).
    since = Math.max(0, status.generated_at_ms - 2 * status.sample_ms - 1000);
  }
  main.replaceChildren(...children);
  document.getElementById("updated").textContent = "updated " + time(status.generated_at_ms);
  document.getElementById("error").textContent = "";
}

function schedule(ms) {
  clearTimeout(timer);
  timer = setTimeout(refresh, ms);
}

// Shows something else now: the answer on its way is for the old view.
function changed(ms) {
  generation += 1;
  since = 0;
  schedule(ms);
}

async function refresh() {
  const mine = generation;
  const model = selected();
  try {
    const response = await fetch(dataUrl(model), { cache: "no-store", credentials: "same-origin" });
    const body = await response.json().catch(() => null);
    if (mine !== generation) return;
    if (!response.ok) {
      if (response.status === 404 && model !== null) {
        document.getElementById("detail-tools").hidden = false;
        document.getElementById("list-tools").hidden = true;
        document.getElementById("models").replaceChildren(el("p", { class: "empty" }, "no model named " + model));
      }
      const why = body && body.error ? body.error.message : "HTTP " + response.status;
      throw new Error(why);
    }
    render(body, model);
  } catch (e) {
    if (mine === generation) document.getElementById("error").textContent = "could not refresh: " + e.message;
  } finally {
    if (mine === generation) schedule(REFRESH_MS);
  }
}

window.addEventListener("hashchange", () => changed(0));
document.getElementById("filter").addEventListener("input", (e) => {
  prefix = e.target.value.trim();
  cursors.length = 0;
  // A little later: typing a name is one fetch, not one per key.
  changed(250);
});
document.getElementById("next").addEventListener("click", () => {
  if (nextCursor === null) return;
  cursors.push(nextCursor);
  changed(0);
});
document.getElementById("previous").addEventListener("click", () => {
  cursors.pop();
  changed(0);
});
refresh();
