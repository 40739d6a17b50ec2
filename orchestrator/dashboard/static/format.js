// Numbers as people read them. Every formatter answers "—" for null/undefined/NaN.

const DASH = "—";

function missing(v) {
  return v === null || v === undefined || Number.isNaN(v);
}

/** Bytes in binary units: 1.5 GiB, 230 MiB. */
export function bytes(n) {
  if (missing(n)) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v.toFixed(0) : v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

/** used/total in the total's unit: "3.0 / 8.0 GiB". */
export function bytesOf(used, total) {
  if (missing(used) || missing(total)) return DASH;
  const [t, unit] = bytes(total).split(" ");
  const scale = Number(total) / Number(t || 1);
  const u = Number(used) / (scale || 1);
  return `${u.toFixed(u >= 100 ? 0 : 1)} / ${t} ${unit}`;
}

/** A ratio 0..1 as a percentage. */
export function pct(r, digits = 0) {
  return missing(r) ? DASH : `${(r * 100).toFixed(digits)}%`;
}

export function celsius(c) {
  return missing(c) ? DASH : `${Number(c).toFixed(1)} °C`;
}

export function watts(w) {
  if (missing(w)) return DASH;
  return `${Number(w).toFixed(w >= 100 ? 0 : 1)} W`;
}

export function hertz(hz) {
  if (missing(hz)) return DASH;
  return hz >= 1e9 ? `${(hz / 1e9).toFixed(2)} GHz` : `${(hz / 1e6).toFixed(0)} MHz`;
}

/** Tokens per second. */
export function tps(v) {
  if (missing(v)) return DASH;
  return `${Number(v).toFixed(v >= 100 ? 0 : 1)} tok/s`;
}

/** A rate without unit: 0.25, 12.5, 140. */
export function num(v, digits = 1) {
  if (missing(v)) return DASH;
  const n = Number(v);
  return Number.isInteger(n) ? String(n) : n.toFixed(Math.abs(n) >= 100 ? 0 : digits);
}

/** A latency given in seconds: "25 ms", "1.20 s". */
export function latency(seconds) {
  if (missing(seconds)) return DASH;
  const ms = seconds * 1000;
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  return `${seconds.toFixed(2)} s`;
}

/** A span of seconds: "42 s", "3 min", "2 h 5 min", "3 d". */
export function duration(seconds) {
  if (missing(seconds)) return DASH;
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) {
    const m = Math.floor((s % 3600) / 60);
    return `${Math.floor(s / 3600)} h${m ? ` ${m} min` : ""}`;
  }
  return `${Math.floor(s / 86400)} d`;
}

/** How long ago a unix time was, seen from `now`: "just now", "3 min ago". */
export function ago(t, now) {
  if (missing(t)) return DASH;
  const d = now - t;
  if (d < 2) return "just now";
  return `${duration(d)} ago`;
}

/** A unix time as the local wall clock (HH:MM:SS). */
export function clock(t) {
  if (missing(t)) return DASH;
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}
