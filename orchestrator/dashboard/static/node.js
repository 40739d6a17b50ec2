// The node page (#/nodes/<id>): everything the node reports, with larger charts of its
// history. Built once per node id; update() rewrites values in place.

import { h, text, attr, kvList, table, show, keyed } from "./dom.js";
import { LineChart } from "./charts.js";
import { nodeColor } from "./colors.js";
import * as f from "./format.js";
import * as fig from "./figures.js";

const CHARTS = [
  // [series, label, format, max]
  ["cpu", "CPU", (v) => f.pct(v), 1],
  ["mem", "Memory", (v) => f.pct(v), 1],
  ["gpu", "GPU load (busiest)", (v) => f.pct(v), 1],
  ["gpu_mem", "GPU memory", (v) => f.pct(v), 1],
  ["temp", "Hottest temperature", (v) => f.celsius(v), null],
  ["power", "Power", (v) => f.watts(v), null],
  ["tps", "Decode tokens/s", (v) => f.num(v, 1), null],
  ["load", "Requests (running + queued)", (v) => f.num(v, 1), null],
];

function panel(title, ...body) {
  const el = h("section", { class: "panel" }, h("h2", null, title), ...body);
  return el;
}

function yesNo(v) {
  return v === null || v === undefined ? "—" : v ? "yes" : "no";
}

function list(v) {
  return v && v.length ? v.join(", ") : "—";
}

export class NodePage {
  constructor(store, id) {
    this.store = store;
    this.id = id;
    // Coloured in update(), once the app has handed out colours in sorted order.
    this.title = h("h1", { class: "node-title" }, h("i", { class: "swatch", "aria-hidden": "true" }), h("span", null, id));
    this.state = h("span", { class: "badge", "data-field": "state" });
    this.throttled = h("span", { class: "badge warn", "data-testid": "throttled", hidden: true }, "throttled");
    this.summary = h("dl", { class: "kvs summary" });
    this.missing = h("p", { class: "muted", hidden: true });
    this.charts = CHARTS.map(([series, label, format, max]) => new LineChart({ series, label, format, max, height: 160 }));
    this.hardware = h("dl", { class: "kvs" });
    this.host = h("dl", { class: "kvs" });
    this.cores = h("div", { class: "cores" });
    this.temps = h("table", { class: "data" });
    this.gpus = h("div", { class: "gpus" });
    this.jetson = h("dl", { class: "kvs" });
    this.rails = h("table", { class: "data" });
    this.fans = h("table", { class: "data" });
    this.models = h("div", { class: "node-models" });
    this.leases = h("table", { class: "data" });
    this.files = h("table", { class: "data" });
    this.jetsonPanel = panel("Jetson", this.jetson, h("h3", null, "Power rails"), h("div", { class: "scroll" }, this.rails), h("h3", null, "Fans"), h("div", { class: "scroll" }, this.fans));
    this.gpuPanel = panel("GPUs", this.gpus);
    this.body = h(
      "div",
      { hidden: true },
      this.summary,
      panel("History, last 15 minutes", h("div", { class: "charts wide" }, this.charts.map((c) => c.el))),
      h(
        "div",
        { class: "columns" },
        panel("Capability profile", this.hardware),
        panel("Host", this.host, h("h3", null, "CPU cores"), this.cores, h("h3", null, "Temperatures"), h("div", { class: "scroll" }, this.temps)),
      ),
      this.gpuPanel,
      this.jetsonPanel,
      panel("Models", this.models),
      h("div", { class: "columns" }, panel("Leases (devices lent to split models)", h("div", { class: "scroll" }, this.leases)), panel("Stored files", h("div", { class: "scroll" }, this.files))),
    );
    this.el = h(
      "div",
      { class: "node-page", "data-testid": "node-page", "data-node": id },
      h("p", { class: "crumbs" }, h("a", { href: "#/" }, "← Overview")),
      h("header", { class: "node-head" }, this.title, this.state, this.throttled),
      this.missing,
      this.body,
    );
  }

  update() {
    const store = this.store;
    const view = store.node(this.id);
    show(this.missing, !view);
    show(this.body, !!view);
    show(this.state, !!view);
    if (!view) {
      text(this.missing, store.doc ? `No node ${this.id} in the cluster (it may have been forgotten).` : "Waiting for the gateway…");
      return;
    }
    const now = store.now();
    const st = view.status;
    const t = st.telemetry;
    const host = t && t.host;
    text(this.state, view.up ? "up" : "down");
    attr(this.state, "class", `badge ${view.up ? "ok" : "bad"}`);
    const reasons = fig.throttleReasons(st);
    show(this.throttled, reasons.length > 0);
    attr(this.throttled, "title", reasons.join(", "));
    const since = store.nodeSince(this.id);
    kvList(this.summary, [
      ["kind", fig.kindText(st)],
      ["address", st.address],
      ["state", view.up ? "up" : `down: ${view.down_reason || "no reason given"}`],
      ["since", since ? `${f.clock(since)} (${f.ago(since, now)})` : "—"],
      ["last report", `${f.duration(view.seconds_since_report)} ago`],
      ["relayed now", String(view.gateway_inflight)],
      ["worker version", st.version || "—"],
      ["free for models", f.bytes(st.memory_free)],
      ["model disk free", f.bytes(st.model_disk_free_bytes)],
      ["files port", st.files_port === null || st.files_port === undefined ? "none" : String(st.files_port)],
      ["throttling", reasons.length ? reasons.join(", ") : "none"],
    ]);

    const hist = store.history(this.id);
    const windowS = store.doc.history.window_s || 900;
    const color = nodeColor(this.id);
    this.title.firstChild.style.background = color;
    CHARTS.forEach(([series], i) => {
      const values = hist ? hist[series] || [] : [];
      // A figure the node never reported (no GPU, no sensors) gets no chart at all.
      const never = values.length > 0 && values.every((v) => v === null || v === undefined);
      show(this.charts[i].el, !never);
      if (!never) this.charts[i].update({ end: now, windowS, t: hist ? hist.t : [], lines: [{ name: this.id, values, color }] });
    });

    const hw = st.hardware;
    kvList(this.hardware, [
      ["kind", hw.kind],
      ["model", hw.model || "—"],
      ["CPU cores", String(hw.cpu_cores || "—")],
      ["memory", f.bytes(hw.memory_total)],
      ["unified memory", yesNo(hw.unified_memory)],
      ["GPU memory", hw.gpu_memory_total ? f.bytes(hw.gpu_memory_total) : "—"],
      ["GPUs", list(hw.gpus)],
      ["compute capability", hw.compute_capability || "—"],
      ["backends", list(hw.backends)],
      ["CPU features", list(hw.cpu_features)],
      ["Jetson module", hw.jetson_module || "—"],
      ["JetPack", hw.jetpack || "—"],
      ["L4T", hw.l4t || "—"],
      ["reference speed", fig.speed(st)],
      ["telemetry sources", list(hw.telemetry_sources)],
      ["telemetry skipped", list(hw.telemetry_skipped)],
      ["labels", list(hw.labels)],
    ]);

    kvList(this.host, host ? [
      ["CPU", f.pct(host.cpu_usage_ratio)],
      ["load average", host.load_average.map((v) => v.toFixed(2)).join(" / ")],
      ["memory", `${f.bytesOf(host.memory_used_bytes, host.memory_total_bytes)} used · ${f.bytes(host.memory_available_bytes)} available`],
      ["swap", f.bytesOf(host.swap_used_bytes, host.swap_total_bytes)],
      ["disk", `${host.disk_path}: ${f.bytes(host.disk_free_bytes)} free of ${f.bytes(host.disk_total_bytes)}`],
      ["worker RSS", f.bytes(host.process_rss_bytes)],
      ["sampled", t ? `${f.ago(t.taken_at, now)} · ${list(t.sources)}` : "—"],
    ] : [["host", "no sample yet"]]);

    keyed(
      this.cores,
      host ? host.cpu_core_usage_ratio.map((v, i) => [i, v]) : [],
      (c) => c[0],
      (c) => h("div", { class: "core", title: `core ${c[0]}` }, h("i")),
      (el, c) => {
        el.firstChild.style.height = `${Math.round(c[1] * 100)}%`;
        attr(el, "title", `core ${c[0]}: ${f.pct(c[1])}`);
      },
    );

    table(this.temps, [{ label: "sensor", cell: (r) => r.sensor }, { label: "°C", cell: (r) => f.celsius(r.celsius), num: true }], fig.temperatures(st), (r) => r.sensor);

    const gpus = (t && t.gpus) || [];
    show(this.gpuPanel, gpus.length > 0);
    keyed(
      this.gpus,
      gpus,
      (g) => g.index,
      () => h("div", { class: "gpu" }, h("h3"), h("dl", { class: "kvs" })),
      (el, g) => {
        text(el.firstChild, `GPU ${g.index}: ${g.name}`);
        kvList(el.lastChild, [
          ["load", f.pct(g.utilization_ratio)],
          [g.unified ? "unified memory" : "memory", `${f.bytesOf(g.memory_used_bytes, g.memory_total_bytes)} · ${f.bytes(g.memory_free_bytes)} free`],
          ["temperature", f.celsius(g.temperature_celsius)],
          ["power", g.power_limit_watts ? `${f.watts(g.power_watts)} of ${f.watts(g.power_limit_watts)}` : f.watts(g.power_watts)],
          ["clocks", g.clocks && g.clocks.length ? g.clocks.map((c) => `${c.domain} ${f.hertz(c.hertz)}`).join(" · ") : "—"],
          ["compute capability", g.compute_capability || "—"],
          ["throttle reasons", g.throttle_reasons && g.throttle_reasons.length ? g.throttle_reasons.join(", ") : "none"],
        ]);
        el.classList.toggle("throttled", !!(g.throttle_reasons && g.throttle_reasons.length));
      },
    );

    const j = t && t.jetson;
    show(this.jetsonPanel, !!j);
    if (j) {
      kvList(this.jetson, [
        ["model", j.model],
        ["module", j.module],
        ["SoC", j.soc],
        ["CUDA arch", j.cuda_arch],
        ["L4T", j.l4t],
        ["JetPack", j.jetpack],
        ["power mode", j.nvpmodel || "—"],
        ["jetson_clocks", yesNo(j.jetson_clocks)],
        ["EMC", `${f.pct(j.emc_utilization_ratio)} at ${f.hertz(j.emc_hertz)}`],
        ["held by the GPU", f.bytes(j.gpu_shared_bytes)],
        ["board power", f.watts(j.power_total_watts)],
      ]);
      table(
        this.rails,
        [
          { label: "rail", cell: (r) => r.name },
          { label: "power", cell: (r) => f.watts(r.watts), num: true },
          { label: "average", cell: (r) => f.watts(r.average_watts), num: true },
          { label: "volts", cell: (r) => (r.volts === null || r.volts === undefined ? "—" : `${r.volts.toFixed(2)} V`), num: true },
          { label: "amps", cell: (r) => (r.amps === null || r.amps === undefined ? "—" : `${r.amps.toFixed(2)} A`), num: true },
        ],
        j.power_rails,
        (r) => r.name,
      );
      table(
        this.fans,
        [
          { label: "fan", cell: (r) => r.name },
          { label: "speed", cell: (r) => f.pct(r.speed_ratio), num: true },
          { label: "rpm", cell: (r) => (r.rpm === null || r.rpm === undefined ? "—" : r.rpm.toFixed(0)), num: true },
        ],
        j.fans,
        (r) => r.name,
      );
    }

    keyed(this.models, st.models || [], (m) => m.alias, modelCard, updateModelCard);
    if (!(st.models || []).length) {
      if (!this.models.querySelector(".muted")) this.models.append(h("p", { class: "muted" }, "No model on this node."));
    } else {
      const note = this.models.querySelector(":scope > .muted");
      if (note) note.remove();
    }

    table(
      this.leases,
      [
        { label: "lease", cell: (r) => r.lease_id },
        { label: "endpoint", cell: (r) => r.endpoint },
        { label: "head", cell: (r) => r.head_host },
        { label: "device", cell: (r) => r.device },
        { label: "reserved", cell: (r) => f.bytes(r.reserved_bytes), num: true },
        { label: "running", cell: (r) => (r.running ? "yes" : `no${r.error ? `: ${r.error}` : ""}`) },
      ],
      st.leases || [],
      (r) => r.lease_id,
    );
    table(
      this.files,
      [
        { label: "name", cell: (r) => r.name || "—" },
        { label: "sha256", cell: (r) => `${r.sha256.slice(0, 12)}…` },
        { label: "size", cell: (r) => f.bytes(r.size_bytes), num: true },
      ],
      st.stored_files || [],
      (r) => r.sha256,
    );
  }
}

function modelCard(m) {
  return h(
    "article",
    { class: "card node-model", "data-model": m.alias },
    h("header", null, h("b", null, m.alias), h("span", { class: "state" })),
    h("p", { class: "error" }),
    h("div", { class: "columns" }, h("div", null, h("h3", null, "Engine"), h("dl", { class: "kvs" })), h("div", null, h("h3", null, "Memory estimate"), h("dl", { class: "kvs" }))),
    h("details", null, h("summary", null, "Config"), h("dl", { class: "kvs" })),
  );
}

function updateModelCard(el, m) {
  const [header, err, cols, details] = el.children;
  text(header.lastChild, m.state);
  attr(header.lastChild, "class", `state s-${m.state}`);
  text(err, m.error);
  show(err, !!m.error);
  const e = m.engine || {};
  const engine = [
    ["slots busy/total", `${e.active}/${e.slots_total}`],
    ["queued", String(e.queued)],
    ["decode", f.tps(e.decode_tps)],
    ["prompt", f.tps(e.prompt_tps)],
    ["cached tokens", String(e.cached_tokens)],
    ["completed", String(e.completed)],
    ["architecture", m.architecture || "—"],
    ["file", f.bytes(m.file_bytes)],
    ["training context", m.n_ctx_train ? String(m.n_ctx_train) : "—"],
    ["chat template", m.chat_template_source || "—"],
  ];
  if (m.download) {
    const d = m.download;
    engine.unshift(["download", `${f.bytesOf(d.bytes_done, d.bytes_total)} · ${f.bytes(d.bytes_per_second)}/s · ${d.source || "waiting"}`]);
  }
  kvList(cols.firstChild.lastChild, engine);
  const est = m.estimate;
  kvList(
    cols.lastChild.lastChild,
    est
      ? [
          ["total", f.bytes(est.weights_bytes + est.kv_cache_bytes + est.compute_bytes)],
          ["weights", f.bytes(est.weights_bytes)],
          ["KV cache", f.bytes(est.kv_cache_bytes)],
          ["compute", f.bytes(est.compute_bytes)],
          ["layers", String(est.n_layers || "—")],
          ["per layer", est.n_layers ? `${f.bytes(est.layer_weights_bytes)} weights + ${f.bytes(est.layer_kv_cache_bytes)} KV` : "—"],
        ]
      : [["estimate", "none"]],
  );
  const cfg = m.config || {};
  kvList(
    details.lastChild,
    Object.entries(cfg).map(([k, v]) => [k, v === null || v === undefined ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v)]),
  );
}
