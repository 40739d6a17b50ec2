// What a node card shows, derived from one NodeView (ClusterView JSON): shared by the
// overview and the node page so both say the same thing.

import * as f from "./format.js";

/** "NVIDIA Jetson AGX Orin (64GB ram)" on a Jetson, else the hardware kind (x86-cuda, ...). */
export function kindText(status) {
  const j = status.telemetry && status.telemetry.jetson;
  return (j && j.module) || status.hardware.kind;
}

export function memory(status) {
  const host = status.telemetry && status.telemetry.host;
  const unified = status.hardware.unified_memory;
  return {
    label: unified ? "Unified" : "RAM",
    ratio: host && host.memory_total_bytes ? host.memory_used_bytes / host.memory_total_bytes : null,
    text: host ? `${f.pct(host.memory_used_bytes / host.memory_total_bytes)} · ${f.bytesOf(host.memory_used_bytes, host.memory_total_bytes)}` : "—",
  };
}

export function cpu(status) {
  const host = status.telemetry && status.telemetry.host;
  if (!host) return "—";
  const cores = status.hardware.cpu_cores ? ` · ${status.hardware.cpu_cores} cores` : "";
  return `${f.pct(host.cpu_usage_ratio)}${cores}`;
}

/** The busiest GPU's load, and memory across GPUs (what the GPU holds, on a Jetson). */
export function gpu(status) {
  const t = status.telemetry;
  const gpus = (t && t.gpus) || [];
  if (!gpus.length) return status.hardware.gpus && status.hardware.gpus.length ? "no reading" : "no GPU";
  const loads = gpus.map((g) => g.utilization_ratio).filter((v) => v !== null && v !== undefined);
  const load = loads.length ? Math.max(...loads) : null;
  const unified = gpus.every((g) => g.unified);
  let mem;
  if (unified) {
    mem = t.jetson ? `${f.bytes(t.jetson.gpu_shared_bytes)} held` : "";
  } else {
    const used = gpus.reduce((a, g) => a + g.memory_used_bytes, 0);
    const total = gpus.reduce((a, g) => a + g.memory_total_bytes, 0);
    mem = f.bytesOf(used, total);
  }
  const count = gpus.length > 1 ? ` (${gpus.length} GPUs)` : "";
  return `${f.pct(load)}${mem ? ` · ${mem}` : ""}${count}`;
}

/** Every temperature the node reports, hottest first: [{sensor, celsius}]. */
export function temperatures(status) {
  const t = status.telemetry;
  if (!t) return [];
  const all = [];
  for (const x of (t.host && t.host.temperatures) || []) all.push({ sensor: x.sensor, celsius: x.celsius });
  for (const x of (t.jetson && t.jetson.temperatures) || []) all.push({ sensor: x.sensor, celsius: x.celsius });
  for (const g of t.gpus || []) {
    if (g.temperature_celsius !== null && g.temperature_celsius !== undefined && !g.unified) {
      all.push({ sensor: `gpu${g.index}`, celsius: g.temperature_celsius });
    }
  }
  return all.sort((a, b) => b.celsius - a.celsius);
}

export function hottest(status, n = 2) {
  const temps = temperatures(status);
  if (!temps.length) return "—";
  // Whole degrees and the sensor's last name part ("coretemp/Package id 0" -> "Package id 0")
  // keep two readings on one line of a card; the node page lists every sensor in full.
  return temps
    .slice(0, n)
    .map((x) => `${Math.round(x.celsius)} °C ${x.sensor.split("/").pop()}`)
    .join(" · ");
}

/** Board power: the Jetson's total, else the GPUs' draw (with their limits). */
export function power(status) {
  const t = status.telemetry;
  if (!t) return { text: "—", rails: [] };
  if (t.jetson) {
    return {
      text: f.watts(t.jetson.power_total_watts),
      rails: (t.jetson.power_rails || []).map((r) => `${r.name} ${f.watts(r.watts)}`),
    };
  }
  const drawing = (t.gpus || []).filter((g) => g.power_watts !== null && g.power_watts !== undefined);
  if (!drawing.length) return { text: "—", rails: [] };
  const w = drawing.reduce((a, g) => a + g.power_watts, 0);
  const limits = drawing.map((g) => g.power_limit_watts).filter((v) => v);
  const limit = limits.length === drawing.length ? ` / ${f.watts(limits.reduce((a, b) => a + b, 0))}` : "";
  return { text: `${f.watts(w)}${limit} GPU`, rails: [] };
}

/** Power mode on a Jetson: "MAXN · clocks pinned"; null elsewhere. */
export function powerMode(status) {
  const j = status.telemetry && status.telemetry.jetson;
  if (!j) return null;
  const parts = [j.nvpmodel || "no nvpmodel"];
  if (j.jetson_clocks === true) parts.push("clocks pinned");
  else if (j.jetson_clocks === false) parts.push("clocks dynamic");
  return parts.join(" · ");
}

/** Why the GPUs are held down now (NVML reasons, Jetson thermal:/power: limits). */
export function throttleReasons(status) {
  const gpus = (status.telemetry && status.telemetry.gpus) || [];
  const reasons = new Set();
  for (const g of gpus) for (const r of g.throttle_reasons || []) reasons.add(r);
  return [...reasons];
}

export function speed(status) {
  const v = status.hardware.reference_decode_tps;
  return v ? `${f.tps(v)} reference` : "not measured";
}
