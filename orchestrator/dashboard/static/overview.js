// The overview (#/): node cards, models, traffic and events. Built once; update() rewrites
// only what changed, keyed by node id, model alias and event seq.

import { h, text, attr, keyed, table, show } from "./dom.js";
import { sparkline, updateSparkline, LineChart, lastValue } from "./charts.js";
import { nodeColor, SERIES } from "./colors.js";
import * as f from "./format.js";
import * as fig from "./figures.js";

function section(title, testid, ...body) {
  return h("section", { class: "panel", "data-testid": testid }, h("h2", null, title), ...body);
}

export function nodeHref(id) {
  return `#/nodes/${encodeURIComponent(id)}`;
}

export function swatch(id) {
  const el = h("i", { class: "swatch", "aria-hidden": "true" });
  el.style.background = nodeColor(id);
  return el;
}

export class Overview {
  constructor(store) {
    this.store = store;
    this.cards = h("div", { class: "cards" });
    this.models = h("div", { class: "models" });
    this.traffic = new Traffic();
    this.events = h("ol", { class: "events" });
    this.noNodes = h("p", { class: "muted" }, "No node has registered yet.");
    this.noModels = h("p", { class: "muted" }, "No model in the catalog yet.");
    this.noEvents = h("p", { class: "muted" }, "Nothing has happened since the gateway started.");
    this.waiting = h("p", { class: "panel muted" }, "Waiting for the gateway's first snapshot…");
    this.body = h(
      "div",
      { hidden: true },
      section("Nodes", "nodes", this.noNodes, this.cards),
      section("Models", "models", this.noModels, this.models),
      h("div", { class: "split-row" }, this.traffic.el, section("Events", "events", this.noEvents, this.events)),
    );
    this.el = h("div", { class: "overview" }, this.waiting, this.body);
  }

  /** What the waiting note says, by the stream's state. */
  waitingFor(state) {
    text(this.waiting, state === "signed-out" ? "Sign in to see the cluster." : state === "reconnecting" ? "The gateway does not answer; trying again…" : "Waiting for the gateway's first snapshot…");
  }

  update() {
    const store = this.store;
    const doc = store.doc;
    show(this.waiting, !doc);
    show(this.body, !!doc);
    if (!doc) {
      // Signed out (or not yet connected): nothing of the cluster stays in the page.
      for (const list of [this.cards, this.models, this.events, ...this.traffic.lists()]) list.replaceChildren();
      return;
    }
    const now = store.now();
    const nodes = store.nodes().slice().sort((a, b) => a.status.node_id.localeCompare(b.status.node_id));
    show(this.noNodes, !nodes.length);
    keyed(this.cards, nodes, (n) => n.status.node_id, (n) => nodeCard(n.status.node_id), (el, n) => updateCard(el, n, store, now));

    const rows = modelRows(doc);
    show(this.noModels, !rows.length);
    keyed(this.models, rows, (r) => r.alias, (r) => modelRow(r.alias), (el, r) => updateModelRow(el, r));

    this.traffic.update(doc, now);

    show(this.noEvents, !doc.events.length);
    keyed(this.events, doc.events, (e) => e.seq, eventItem, (el, e) => updateEvent(el, e, now));
  }
}

// Node cards.

const METRICS = [
  // [field, label, history column, sparkline max (null = scale to data)]
  ["cpu", "CPU", "cpu", 1],
  ["mem", "RAM", "mem", 1],
  ["gpu", "GPU", "gpu", 1],
  ["temp", "Temp", "temp", null],
  ["power", "Power", "power", null],
  ["tps", "Decode", "tps", null], // tokens/s generated now (a replica shows its recent rate)
];

function nodeCard(id) {
  const metrics = METRICS.map(([field, label]) =>
    h("div", { class: "metric", "data-metric": field }, h("span", { class: "label" }, label), h("span", { class: "value", "data-field": field }), sparkline(`${label} of ${id}, last 15 minutes`)),
  );
  const card = h(
    "article",
    { class: "card node-card", "data-testid": "node-card", "data-node": id },
    h(
      "header",
      null,
      h("a", { class: "node-name", "data-testid": "node-link", href: nodeHref(id) }, swatch(id), h("span", null, id)),
      h("span", { class: "badge", "data-field": "state" }),
    ),
    h("div", { class: "sub" }, h("span", { "data-field": "kind" }), h("span", { class: "since", "data-field": "since" })),
    h("p", { class: "down-reason" }),
    h("div", { class: "metrics" }, metrics),
    h(
      "div",
      { class: "facts" },
      h("span", { class: "rails" }),
      h("span", { class: "mode" }, "mode ", h("b", { "data-field": "mode" })),
      h("span", null, "speed ", h("b", { "data-field": "speed" })),
      h("span", null, "load ", h("b", { "data-field": "load" })),
    ),
  );
  card.__parts = {
    state: card.querySelector('[data-field="state"]'),
    kind: card.querySelector('[data-field="kind"]'),
    since: card.querySelector('[data-field="since"]'),
    down: card.querySelector(".down-reason"),
    header: card.querySelector("header"),
    rails: card.querySelector(".rails"),
    mode: card.querySelector(".mode"),
    modeValue: card.querySelector('[data-field="mode"]'),
    speed: card.querySelector('[data-field="speed"]'),
    load: card.querySelector('[data-field="load"]'),
    metrics: Object.fromEntries(metrics.map((m) => [m.dataset.metric, m])),
  };
  return card;
}

function updateCard(card, view, store, now) {
  const st = view.status;
  const p = card.__parts;
  attr(card, "data-up", view.up ? "true" : "false");
  attr(card, "data-kind", st.hardware.kind);
  card.classList.toggle("down", !view.up);
  card.style.setProperty("--node", nodeColor(st.node_id));
  text(p.state, view.up ? "up" : "down");
  attr(p.state, "class", `badge ${view.up ? "ok" : "bad"}`);
  text(p.kind, fig.kindText(st));
  attr(p.kind, "title", [st.hardware.model, ...(st.hardware.gpus || [])].filter(Boolean).join(" · "));
  const since = store.nodeSince(st.node_id);
  const started = store.doc.gateway && store.doc.gateway.started_at;
  text(p.since, since ? `since ${f.ago(since, now)}` : started ? `since ≥ ${f.ago(started, now)}` : "");
  attr(p.since, "title", since ? f.clock(since) : "no join or down event kept: at least since the gateway started");
  // A down node's figures are its last report's: say how old they are.
  const reason = view.down_reason || "no report";
  text(p.down, view.up ? "" : `${reason} · figures below are from ${f.duration(view.seconds_since_report)} ago`);
  show(p.down, !view.up);

  const mem = fig.memory(st);
  const m = p.metrics;
  text(m.cpu.children[1], fig.cpu(st));
  text(m.mem.children[0], mem.label);
  text(m.mem.children[1], mem.text);
  text(m.gpu.children[1], fig.gpu(st));
  text(m.temp.children[1], fig.hottest(st));
  const power = fig.power(st);
  text(m.power.children[1], power.text);
  const models = st.models || [];
  const hist = store.history(st.node_id);
  // The node's decode rate now: its latest history point, else its engines' figures.
  const recorded = hist && hist.tps ? lastValue(hist.tps) : null;
  const decode = recorded !== null ? recorded : models.reduce((a, x) => a + (x.engine ? x.engine.decode_tps * x.engine.active : 0), 0);
  text(m.tps.children[1], f.tps(decode));

  const windowS = store.doc.history.window_s || 900;
  for (const [field, , column, max] of METRICS) {
    updateSparkline(m[field].children[2], hist ? hist.t : [], hist ? hist[column] || [] : [], now, windowS, max);
  }

  text(p.rails, power.rails.join(" · "));
  show(p.rails, power.rails.length > 0);
  const mode = fig.powerMode(st);
  text(p.modeValue, mode || "");
  show(p.mode, mode !== null);
  text(p.speed, fig.speed(st));
  const load = models.reduce((a, x) => a + (x.engine ? x.engine.active + x.engine.queued : 0), 0);
  text(p.load, `${load} request${load === 1 ? "" : "s"}`);

  // The throttled flag exists only while throttled, so its presence is the signal.
  const reasons = fig.throttleReasons(st);
  let flag = p.header.querySelector('[data-testid="throttled"]');
  if (reasons.length && !flag) {
    flag = h("span", { class: "badge warn", "data-testid": "throttled" });
    p.header.insertBefore(flag, p.state);
  } else if (!reasons.length && flag) {
    flag.remove();
    flag = null;
  }
  if (flag) {
    text(flag, "throttled");
    attr(flag, "title", reasons.join(", "));
  }
  card.classList.toggle("throttled", reasons.length > 0);
}

// Models: one row per alias, gathered from every node's models, the splits and the
// placement problems.

export function modelRows(doc) {
  const byAlias = new Map();
  const row = (alias) => {
    if (!byAlias.has(alias)) byAlias.set(alias, { alias, replicas: [], problems: [], split: null, info: null });
    return byAlias.get(alias);
  };
  for (const view of doc.cluster.nodes || []) {
    for (const m of view.status.models || []) {
      const r = row(m.alias);
      r.replicas.push({ node: view.status.node_id, up: view.up, model: m });
      if (!r.info) r.info = m;
    }
  }
  for (const p of doc.cluster.placement_problems || []) row(p.alias).problems.push(p.reason);
  for (const sp of doc.splits || []) row(sp.model).split = sp;
  for (const r of byAlias.values()) r.replicas.sort((a, b) => a.node.localeCompare(b.node));
  return [...byAlias.values()].sort((a, b) => a.alias.localeCompare(b.alias));
}

function modelRow(alias) {
  const el = h(
    "article",
    { class: "card model-row", "data-testid": "model-row", "data-model": alias },
    h("header", null, h("b", { class: "alias" }, alias), h("span", { class: "badge ready-count" }), h("span", { class: "muted info" })),
    h("div", { class: "replicas" }),
    h("div", { class: "split-holder" }),
    h("ul", { class: "problems" }),
  );
  return el;
}

function updateModelRow(el, r) {
  const ready = r.replicas.filter((x) => x.up && x.model.state === "ready").length;
  attr(el, "data-ready", ready);
  const [header, replicas, splitHolder, problems] = el.children;
  const badge = header.children[1];
  text(badge, `${ready}/${r.replicas.length} ready`);
  attr(badge, "class", `badge ready-count ${ready ? "ok" : r.replicas.length ? "warn" : "bad"}`);
  const info = r.info;
  text(header.children[2], info ? [info.architecture, info.file_bytes ? f.bytes(info.file_bytes) : "", info.config && info.config.n_ctx ? `ctx ${info.config.n_ctx}` : ""].filter(Boolean).join(" · ") : "");

  keyed(replicas, r.replicas, (x) => x.node, replicaChip, updateReplica);

  if (r.split) {
    let bar = splitHolder.firstElementChild;
    if (!bar) {
      bar = splitBar(r.alias);
      splitHolder.append(bar);
    }
    updateSplitBar(bar, r.split);
  } else if (splitHolder.firstElementChild) {
    splitHolder.firstElementChild.remove();
  }

  keyed(
    problems,
    r.problems,
    (reason) => reason,
    (reason) => h("li", { class: "problem", "data-testid": "placement-problem", "data-model": r.alias }, h("b", null, "not placed: "), reason),
    () => {},
  );
}

function replicaChip(x) {
  return h(
    "div",
    { class: "replica", "data-testid": "replica", "data-node": x.node },
    h("div", { class: "replica-head" }, swatch(x.node), h("a", { href: nodeHref(x.node) }, x.node), h("span", { class: "state" })),
    h(
      "div",
      { class: "replica-figs" },
      h("span", null, "slots ", h("b", { "data-field": "slots" })),
      h("span", null, "queue ", h("b", { "data-field": "queue" })),
      h("span", null, h("b", { "data-field": "tps" })),
    ),
    h("div", { class: "replica-extra" }),
  );
}

function updateReplica(el, x) {
  const m = x.model;
  const e = m.engine || { slots_total: 0, active: 0, queued: 0, decode_tps: 0 };
  const state = x.up ? m.state : `${m.state} (node down)`;
  attr(el, "data-state", m.state);
  el.classList.toggle("node-down", !x.up);
  const head = el.firstChild;
  text(head.children[2], state);
  attr(head.children[2], "class", `state s-${m.state}`);
  text(el.querySelector('[data-field="slots"]'), `${e.active}/${e.slots_total}`);
  text(el.querySelector('[data-field="queue"]'), e.queued);
  const tps = el.querySelector('[data-field="tps"]');
  text(tps, f.tps(e.decode_tps));
  attr(tps, "title", "recent decode rate of one sequence");
  const extra = el.lastChild;
  let dl = extra.querySelector('[data-testid="download"]');
  if (m.download) {
    if (!dl) {
      dl = h("div", { class: "download", "data-testid": "download" }, h("div", { class: "progress" }, h("div", { class: "fill" })), h("span", { class: "muted" }));
      extra.prepend(dl);
    }
    const d = m.download;
    const fraction = d.bytes_total ? d.bytes_done / d.bytes_total : 0;
    attr(dl, "data-fraction", fraction.toFixed(4));
    dl.firstChild.firstChild.style.width = `${(fraction * 100).toFixed(1)}%`;
    const parts = [`${f.pct(fraction)} of ${f.bytes(d.bytes_total)}`];
    if (d.attempt === 0) parts.push("waiting for a download slot");
    else {
      if (d.bytes_per_second) parts.push(`${f.bytes(d.bytes_per_second)}/s`);
      if (d.eta_s) parts.push(`${f.duration(d.eta_s)} left`);
      if (d.source) parts.push(`from ${d.source}`);
      if (d.attempt > 1) parts.push(`attempt ${d.attempt}`);
    }
    text(dl.lastChild, parts.join(" · "));
  } else if (dl) {
    dl.remove();
  }
  let err = extra.querySelector(".error");
  if (m.error) {
    if (!err) {
      err = h("p", { class: "error" });
      extra.append(err);
    }
    text(err, m.error);
  } else if (err) {
    err.remove();
  }
}

// The layer split: a bar of layers, each span coloured by the node holding it.

export function splitBar(alias) {
  return h(
    "div",
    { class: "split" },
    h("div", { class: "split-title muted" }),
    h("div", { class: "split-bar", "data-testid": "split-bar", "data-model": alias, role: "img" }),
    h("div", { class: "split-legend" }),
  );
}

function spanRange(sp) {
  return sp.first === null || sp.first === undefined ? `${sp.count} layers` : sp.count === 1 ? `layer ${sp.first}` : `layers ${sp.first}-${sp.first + sp.count - 1}`;
}

export function updateSplitBar(el, split) {
  const [title, bar, legend] = el.children;
  text(title, `split over ${split.spans.length} node${split.spans.length === 1 ? "" : "s"} · ${split.n_layers || "?"} layers · head ${split.head}`);
  const spans = split.spans.map((sp, i) => ({ ...sp, key: `${i}|${sp.node}` }));
  attr(bar, "aria-label", spans.map((sp) => `${spanRange(sp)} on ${sp.node}`).join("; "));
  keyed(
    bar,
    spans,
    (sp) => sp.key,
    (sp) => h("div", { class: "split-segment", "data-testid": "split-segment", "data-node": sp.node }, h("span")),
    (seg, sp) => {
      attr(seg, "data-first", sp.first === null || sp.first === undefined ? "" : sp.first);
      attr(seg, "data-count", sp.count);
      attr(seg, "data-role", sp.role);
      const label = `${spanRange(sp)} on ${sp.node}${sp.role === "rpc" && sp.endpoint ? ` (rpc ${sp.endpoint})` : sp.role === "head" ? " (head)" : ""}`;
      attr(seg, "title", label);
      seg.style.flexGrow = String(Math.max(sp.count, 0.5));
      seg.style.background = nodeColor(sp.node);
      text(seg.firstChild, sp.first === null || sp.first === undefined ? `${sp.count}` : `${sp.first}–${sp.first + sp.count - 1}`);
    },
  );
  keyed(
    legend,
    spans,
    (sp) => sp.key,
    (sp) => h("span", { class: "key" }, swatch(sp.node), h("span")),
    (k, sp) => text(k.lastChild, `${sp.node}: ${spanRange(sp)}`),
  );
}

// Traffic.

const LAT = (v) => f.latency(v);

class Traffic {
  constructor() {
    this.tiles = h("div", { class: "tiles" });
    this.charts = {
      rps: new LineChart({ series: "rps", label: "Requests/s", format: (v) => f.num(v, 2) }),
      tps: new LineChart({ series: "tps", label: "Tokens/s", format: (v) => f.num(v, 1) }),
      ttft: new LineChart({ series: "ttft", label: "Time to first token", format: LAT }),
      itl: new LineChart({ series: "itl", label: "Inter-token latency", format: LAT }),
    };
    this.errors = h("div", { class: "error-kinds" });
    this.byModel = h("table", { class: "data" });
    this.byNode = h("table", { class: "data" });
    this.el = section(
      "Traffic",
      "traffic",
      this.tiles,
      h("div", { class: "charts" }, Object.values(this.charts).map((c) => c.el)),
      this.errors,
      h("h3", null, "By model, last minute"),
      h("div", { class: "scroll" }, this.byModel),
      h("h3", null, "By node, last minute"),
      h("div", { class: "scroll" }, this.byNode),
    );
  }

  /** The containers holding the cluster's figures (emptied on sign-out). */
  lists() {
    return [this.tiles, this.errors, ...[this.byModel, this.byNode].map((t) => t.tBodies[0]).filter(Boolean)];
  }

  update(doc, now) {
    const s = doc.traffic_summary || {};
    const tiles = [
      ["rps", "requests/s", f.num(s.rps, 2)],
      ["tps", "tokens/s", f.num(s.tps, 1)],
      ["ttft", "TTFT p50 / p99", `${LAT(s.ttft_p50)} / ${LAT(s.ttft_p99)}`],
      ["itl", "ITL p50 / p99", `${LAT(s.itl_p50)} / ${LAT(s.itl_p99)}`],
      ["errors", "errors", String(sumErrors(s.errors))],
    ];
    keyed(
      this.tiles,
      tiles,
      (t) => t[0],
      (t) => h("div", { class: "tile", "data-field": t[0] }, h("b"), h("span", null, t[1])),
      (el, t) => text(el.firstChild, t[2]),
    );
    const tr = doc.traffic;
    const bucket = tr.bucket_s || 5;
    const ts = tr.t.map((t) => t + bucket);
    const windowS = (doc.history && doc.history.window_s) || 900;
    const per = (vs) => (vs || []).map((v) => (v === null || v === undefined ? null : v / bucket));
    const base = { end: now, windowS, t: ts };
    this.charts.rps.update({ ...base, lines: [{ name: "requests/s", values: per(tr.requests), color: SERIES.a }, { name: "errors/s", values: per(tr.errors), color: SERIES.b }] });
    this.charts.tps.update({ ...base, lines: [{ name: "tokens/s", values: per(tr.tokens), color: SERIES.c }] });
    this.charts.ttft.update({ ...base, lines: [{ name: "p50", values: tr.ttft_p50 || [], color: SERIES.a }, { name: "p99", values: tr.ttft_p99 || [], color: SERIES.d, dashed: true }] });
    this.charts.itl.update({ ...base, lines: [{ name: "p50", values: tr.itl_p50 || [], color: SERIES.a }, { name: "p99", values: tr.itl_p99 || [], color: SERIES.d, dashed: true }] });

    const kinds = Object.entries(s.errors || {}).sort((a, b) => b[1] - a[1]);
    keyed(
      this.errors,
      kinds.length ? kinds : [["", 0]],
      (k) => k[0],
      (k) => h("span", { class: k[0] ? "badge bad" : "muted" }),
      (el, k) => text(el, k[0] ? `${k[0]} ${k[1]}` : "no errors in the last minute"),
    );

    const cols = (first, key) => [
      { label: first, cell: (r) => r[key] },
      { label: "requests", cell: (r) => f.num(r.requests, 0), num: true, field: "requests" },
      { label: "req/s", cell: (r) => f.num(r.rps, 2), num: true, field: "rps" },
      { label: "tok/s", cell: (r) => f.num(r.tps, 1), num: true, field: "tps" },
      { label: "TTFT p50", cell: (r) => LAT(r.ttft_p50), num: true },
      { label: "TTFT p99", cell: (r) => LAT(r.ttft_p99), num: true },
      { label: "ITL p50", cell: (r) => LAT(r.itl_p50), num: true },
      { label: "ITL p99", cell: (r) => LAT(r.itl_p99), num: true },
      { label: "errors", cell: (r) => errorText(r.errors), num: true, field: "errors" },
    ];
    table(this.byModel, cols("model", "model"), s.by_model || [], (r) => r.model, (r) => ({ "data-testid": "traffic-row", "data-model": r.model }));
    table(this.byNode, cols("node", "node"), s.by_node || [], (r) => r.node, (r) => ({ "data-testid": "traffic-node-row", "data-node": r.node }));
  }
}

function sumErrors(errors) {
  return Object.values(errors || {}).reduce((a, b) => a + b, 0);
}

function errorText(errors) {
  const kinds = Object.entries(errors || {});
  return kinds.length ? kinds.map(([k, v]) => `${k} ${v}`).join(", ") : "0";
}

// Events.

function eventItem(e) {
  return h(
    "li",
    { class: `event level-${e.level}`, "data-testid": "event", "data-kind": e.kind, "data-level": e.level },
    h("time", { datetime: new Date(e.t * 1000).toISOString(), title: f.clock(e.t) }),
    h("span", { class: "kind" }, e.kind.replace(/_/g, " ")),
    h("span", { class: "msg" }, e.message),
  );
}

function updateEvent(el, e, now) {
  text(el.firstChild, f.ago(e.t, now));
}
