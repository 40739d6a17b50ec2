// Hand-written SVG charts: a sparkline for the node cards and a time-series line chart
// with axes, a legend and a hover read-out. Both are updated in place (one path per
// series, its "d" rewritten), so a chart costs a few attribute writes per update.

import { h, s, attr, text, keyed } from "./dom.js";

// A point with no neighbour (one bucket of latency samples, say) has no segment to draw:
// give it a short dash of its own, rounded by the line's caps.
const LONE_POINT = "m-2,0h4";

/** Path data for points (x, y) in pixel space; a null y breaks the line. */
function pathData(ts, vs, x, y) {
  let d = "";
  let run = 0; // points in the current run of non-null values
  for (let i = 0; i < ts.length; i += 1) {
    const v = vs[i];
    if (v === null || v === undefined || Number.isNaN(v)) {
      if (run === 1) d += LONE_POINT;
      run = 0;
      continue;
    }
    d += `${run ? "L" : "M"}${x(ts[i]).toFixed(1)},${y(v).toFixed(1)}`;
    run += 1;
  }
  if (run === 1) d += LONE_POINT;
  return d;
}

/**
 * The span the x axis covers: the whole window once the data fill it, else what the data
 * cover (at least two minutes, rounded up to a tidy step), so that a fresh gateway's few
 * minutes are not squeezed against the right edge.
 */
export function span(ts, end, windowS) {
  if (!ts || !ts.length) return windowS;
  const covered = Math.max(120, end - ts[0]);
  const step = covered > 1800 ? 600 : covered > 600 ? 300 : 60;
  return Math.min(windowS, Math.ceil(covered / step) * step);
}

function finiteMax(arrays) {
  let m = -Infinity;
  for (const a of arrays) for (const v of a) if (v !== null && v !== undefined && v > m) m = v;
  return m;
}

/** A small sparkline svg (data-testid="sparkline"), filled by updateSparkline. */
export function sparkline(label) {
  return s(
    "svg",
    { "data-testid": "sparkline", class: "spark", viewBox: "0 0 120 24", preserveAspectRatio: "none", role: "img", "aria-label": label },
    s("path", { class: "spark-area" }),
    s("path", { class: "spark-line", "vector-effect": "non-scaling-stroke" }),
  );
}

/**
 * Redraw a sparkline over the window [end - windowS, end]; max is the top of the scale
 * (1 for ratios) or null to scale to the data.
 */
export function updateSparkline(svg, ts, vs, end, windowS, max = null) {
  const W = 120;
  const H = 24;
  const top = max !== null ? max : Math.max(finiteMax([vs]) * 1.1, 1e-9);
  const shown = span(ts, end, windowS);
  const x = (t) => W * (1 - (end - t) / shown);
  const y = (v) => H - 1 - (H - 2) * Math.min(1, Math.max(0, v / top));
  const line = pathData(ts || [], vs || [], x, y);
  const [area, stroke] = svg.children;
  attr(stroke, "d", line);
  // The area under the line: each run of points closed down to the baseline.
  attr(area, "d", line.split(LONE_POINT).join("").replace(/M([\d.-]+),([\d.-]+)((?:L[\d.-]+,[\d.-]+)*)/g, (_m, x0, y0, rest) => {
    const last = rest ? rest.slice(rest.lastIndexOf("L") + 1).split(",")[0] : x0;
    return `M${x0},${H}L${x0},${y0}${rest}L${last},${H}Z`;
  }));
}

/** Round a chart's top up to 1, 2 or 5 times a power of ten. */
function niceTop(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  // Not 2.5: the middle rule would read 1.25.
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/**
 * A time-series chart: new LineChart({series: "cpu", label, format, max}) then
 * chart.update({end, windowS, t, lines: [{name, values, color}]}). Its element is chart.el.
 */
export class LineChart {
  constructor({ series, label, format, max = null, height = 140 }) {
    this.format = format;
    this.max = max;
    this.height = height;
    this.data = null;
    this.svg = s("svg", { "data-testid": "chart", "data-series": series, class: "chart", role: "img", "aria-label": label, height });
    this.grid = s("g", { class: "grid" });
    this.lines = s("g", { class: "lines" });
    this.cursor = s("line", { class: "cursor", y1: 0, y2: height, visibility: "hidden" });
    this.empty = s("text", { class: "empty", "text-anchor": "middle" }, "no data yet");
    this.svg.append(this.grid, this.lines, this.cursor, this.empty);
    this.tip = h("div", { class: "tip", hidden: true });
    this.legend = h("div", { class: "legend" });
    this.el = h("figure", { class: "chart-box" }, h("figcaption", null, label), h("div", { class: "chart-area" }, this.svg, this.tip), this.legend);
    this.svg.addEventListener("pointermove", (e) => this._hover(e));
    this.svg.addEventListener("pointerleave", () => {
      attr(this.cursor, "visibility", "hidden");
      this.tip.hidden = true;
    });
    // The width comes from the observer, so a redraw never forces a layout to measure it.
    this.width = 0;
    new ResizeObserver((entries) => {
      const w = Math.round(entries[entries.length - 1].contentRect.width);
      if (w && w !== this.width) {
        this.width = w;
        if (this.data) this._draw();
      }
    }).observe(this.svg);
  }

  update(data) {
    this.data = data;
    this._draw();
  }

  _draw() {
    const { end, t, lines } = this.data;
    const windowS = span(t, end, this.data.windowS);
    if (!this.width) this.width = this.svg.clientWidth; // before the observer's first report
    const W = this.width || 300;
    const H = this.height;
    const pad = { l: 48, r: 8, t: 8, b: 20 };
    attr(this.svg, "viewBox", `0 0 ${W} ${H}`);
    const dataMax = finiteMax(lines.map((l) => l.values));
    const top = this.max !== null ? this.max : niceTop(dataMax > 0 ? dataMax * 1.05 : 0);
    const x = (tt) => pad.l + (W - pad.l - pad.r) * (1 - (end - tt) / windowS);
    const y = (v) => pad.t + (H - pad.t - pad.b) * (1 - Math.min(1, Math.max(0, v / top)));
    this.scale = { x, y, pad, W, end, windowS };

    // Grid and labels: rebuilt only when the size or the scale changes.
    const gridKey = `${W}|${top}|${windowS}`;
    if (this.gridKey !== gridKey) {
      this.gridKey = gridKey;
      while (this.grid.firstChild) this.grid.firstChild.remove();
      for (const f of [0, 0.5, 1]) {
        const yy = y(top * f);
        this.grid.append(
          s("line", { x1: pad.l, x2: W - pad.r, y1: yy, y2: yy, class: f === 0 ? "axis" : "rule" }),
          s("text", { x: pad.l - 6, y: yy + 4, "text-anchor": "end" }, f === 0 ? "0" : this.format(top * f)),
        );
      }
      const stepS = windowS > 1800 ? 600 : windowS > 600 ? 300 : windowS > 150 ? 60 : 30;
      for (let back = 0; back <= windowS + 1e-6; back += stepS) {
        const xx = x(end - back);
        const label = back === 0 ? "now" : `−${back / 60} min`;
        this.grid.append(s("text", { x: xx, y: H - 4, "text-anchor": back === 0 ? "end" : back >= windowS ? "start" : "middle" }, label));
      }
      attr(this.empty, "x", W / 2);
      attr(this.empty, "y", H / 2);
    }

    keyed(
      this.lines,
      lines,
      (l) => l.name,
      (l) => s("path", { class: "line", "vector-effect": "non-scaling-stroke" }),
      (p, l) => {
        attr(p, "d", pathData(t, l.values, x, y));
        attr(p, "stroke", l.color);
        attr(p, "stroke-dasharray", l.dashed ? "4 3" : null);
      },
    );
    const hasData = lines.some((l) => l.values.some((v) => v !== null && v !== undefined));
    attr(this.empty, "visibility", hasData ? "hidden" : "visible");
    attr(this.svg, "data-points", t.length);

    keyed(
      this.legend,
      lines,
      (l) => l.name,
      () => h("span", { class: "key" }, h("i", { class: "swatch" }), h("span"), h("b")),
      (el, l) => {
        el.firstChild.style.background = l.color;
        el.firstChild.style.borderStyle = l.dashed ? "dashed" : "solid";
        text(el.children[1], l.name);
        text(el.children[2], this.format(lastValue(l.values)));
      },
    );
  }

  _hover(e) {
    if (!this.data || !this.scale || !this.data.t.length) return;
    const { x, pad, W, end, windowS } = this.scale;
    const rect = this.svg.getBoundingClientRect();
    const px = ((e.clientX - rect.left) / rect.width) * W;
    const tt = end - windowS * (1 - (px - pad.l) / (W - pad.l - pad.r));
    const ts = this.data.t;
    let best = 0;
    for (let i = 1; i < ts.length; i += 1) if (Math.abs(ts[i] - tt) < Math.abs(ts[best] - tt)) best = i;
    const cx = x(ts[best]);
    attr(this.cursor, "x1", cx);
    attr(this.cursor, "x2", cx);
    attr(this.cursor, "visibility", "visible");
    const when = new Date(ts[best] * 1000).toLocaleTimeString([], { hour12: false });
    const rows = [when].concat(this.data.lines.map((l) => `${l.name}: ${this.format(l.values[best])}`));
    this.tip.textContent = rows.join("\n");
    this.tip.hidden = false;
    const left = (cx / W) * rect.width;
    this.tip.style.left = `${Math.max(0, Math.min(left + 8, rect.width - this.tip.offsetWidth - 4))}px`;
  }
}

/** The latest non-null value of a column, or null. */
export function lastValue(vs) {
  for (let i = vs.length - 1; i >= 0; i -= 1) if (vs[i] !== null && vs[i] !== undefined) return vs[i];
  return null;
}
