// The page's copy of the dashboard document: a snapshot replaces it, an update is applied
// to it (whole members replaced, columnar history appended and trimmed to the window,
// events prepended and capped). Views read it; nothing here touches the DOM.

export const MAX_EVENTS = 200;
const TRAFFIC_FIELDS = ["requests", "errors", "tokens", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99"];

export class Store {
  constructor() {
    this.doc = null;
    this.skew = 0; // gateway clock minus ours, in seconds
    this.listeners = new Set();
  }

  /** Gateway time now, in unix seconds (relative times are measured against the gateway's clock). */
  now() {
    return Date.now() / 1000 + this.skew;
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  _changed() {
    for (const fn of this.listeners) fn(this);
  }

  /** Forget the document (after signing out: nothing stays on the page without the key). */
  clear() {
    this.doc = null;
    this._changed();
  }

  applySnapshot(doc) {
    this.doc = {
      ...doc,
      history: normaliseHistory(doc.history),
      traffic: normaliseTraffic(doc.traffic),
      events: (doc.events || []).slice(0, MAX_EVENTS),
    };
    this._clock(doc.at);
    this._trim();
    this._changed();
  }

  applyUpdate(doc) {
    const cur = this.doc;
    if (!cur) return; // an update before any snapshot has nothing to apply to
    for (const key of ["gateway", "cluster", "splits", "traffic_summary", "at", "schema_version"]) {
      if (key in doc) cur[key] = doc[key];
    }
    if (doc.history) {
      const h = cur.history;
      if (doc.history.interval_s) h.interval_s = doc.history.interval_s;
      if (doc.history.window_s) h.window_s = doc.history.window_s;
      for (const [node, cols] of Object.entries(doc.history.nodes || {})) {
        h.nodes[node] = appendColumns(h.nodes[node], cols);
      }
    }
    if (doc.traffic) appendTraffic(cur.traffic, doc.traffic);
    if (doc.events && doc.events.length) {
      const known = new Set(cur.events.map((e) => e.seq));
      const fresh = doc.events.filter((e) => !known.has(e.seq));
      cur.events = fresh.concat(cur.events).slice(0, MAX_EVENTS);
    }
    this._clock(doc.at);
    this._trim();
    this._changed();
  }

  _clock(at) {
    if (typeof at === "number") this.skew = at - Date.now() / 1000;
  }

  /** Drop points older than the window, and the history of nodes the cluster no longer has. */
  _trim() {
    const d = this.doc;
    const at = typeof d.at === "number" ? d.at : this.now();
    const window = d.history.window_s || 900;
    const present = new Set(((d.cluster && d.cluster.nodes) || []).map((n) => n.status.node_id));
    for (const [node, cols] of Object.entries(d.history.nodes)) {
      if (!present.has(node)) delete d.history.nodes[node];
      else trimColumns(cols, at - window);
    }
    trimTraffic(d.traffic, at - window);
  }

  // Lookups the views share.

  nodes() {
    return (this.doc && this.doc.cluster && this.doc.cluster.nodes) || [];
  }

  node(id) {
    return this.nodes().find((n) => n.status.node_id === id) || null;
  }

  history(id) {
    return (this.doc && this.doc.history.nodes[id]) || null;
  }

  /** The unix time of the latest event saying the node went up or down (its state's "since"). */
  nodeSince(id) {
    const e = ((this.doc && this.doc.events) || []).find(
      (ev) => ev.node === id && (ev.kind === "node_joined" || ev.kind === "node_down" || ev.kind === "node_back"),
    );
    return e ? e.t : null;
  }
}

function normaliseHistory(history) {
  const h = { interval_s: 2, window_s: 900, nodes: {}, ...(history || {}) };
  const nodes = {};
  for (const [id, cols] of Object.entries(h.nodes || {})) nodes[id] = appendColumns(null, cols);
  h.nodes = nodes;
  return h;
}

/** Append a columnar block ({t: [...], field: [...]}) to another, keeping columns aligned. */
export function appendColumns(target, cols) {
  const out = target || { t: [] };
  const before = out.t.length;
  const added = (cols.t || []).length;
  for (const [field, values] of Object.entries(cols)) {
    if (!Array.isArray(values)) continue;
    if (!out[field]) out[field] = new Array(before).fill(null);
    out[field].push(...values);
  }
  // A field the update left out gets nulls, so every column stays as long as t.
  for (const field of Object.keys(out)) {
    if (Array.isArray(out[field]) && out[field].length < before + added) {
      out[field].push(...new Array(before + added - out[field].length).fill(null));
    }
  }
  return out;
}

/** Drop the points of a columnar block whose t is older than `oldest`. */
export function trimColumns(cols, oldest) {
  const t = cols.t || [];
  let n = 0;
  while (n < t.length && t[n] < oldest) n += 1;
  if (!n) return;
  for (const field of Object.keys(cols)) if (Array.isArray(cols[field])) cols[field].splice(0, n);
}

function normaliseTraffic(traffic) {
  const t = { bucket_s: 5, t: [], by_model: {} };
  if (traffic) appendTraffic(t, traffic);
  return t;
}

function appendTraffic(cur, add) {
  if (add.bucket_s) cur.bucket_s = add.bucket_s;
  const before = cur.t.length;
  const top = { t: add.t || [] };
  for (const f of TRAFFIC_FIELDS) if (add[f]) top[f] = add[f];
  appendColumns(cur, top);
  for (const [model, cols] of Object.entries(add.by_model || {})) {
    let m = cur.by_model[model];
    if (!m) {
      m = { t: new Array(before).fill(null) };
      cur.by_model[model] = m;
    }
    appendColumns(m, { t: add.t || [], ...cols });
  }
  // A model with no points in this block keeps its columns aligned with the others.
  for (const m of Object.values(cur.by_model)) {
    if (m.t.length < cur.t.length) appendColumns(m, { t: cur.t.slice(m.t.length) });
  }
}

function trimTraffic(traffic, oldest) {
  const t = traffic.t;
  let n = 0;
  while (n < t.length && t[n] < oldest) n += 1;
  if (!n) return;
  trimColumns(traffic, oldest);
  for (const m of Object.values(traffic.by_model)) {
    for (const field of Object.keys(m)) if (Array.isArray(m[field])) m[field].splice(0, n);
  }
}
