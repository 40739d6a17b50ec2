// The gateway's API as the page uses it: the key (sessionStorage only, sent as a header,
// never in a URL), plain requests, and the dashboard's event stream read over fetch (an
// EventSource cannot send the Authorization header).

const KEY_NAME = "llamaherd.api_key";
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 5000;

/** The request was refused for want of a (right) API key. */
export class Unauthorized extends Error {
  constructor(message) {
    super(message || "an API key is required");
    this.name = "Unauthorized";
  }
}

export function getKey() {
  try {
    return sessionStorage.getItem(KEY_NAME) || "";
  } catch {
    return "";
  }
}

export function setKey(key) {
  sessionStorage.setItem(KEY_NAME, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY_NAME);
}

/** Headers for an API call, with the key when one is held. */
export function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const key = getKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return headers;
}

/** fetch with the key; throws Unauthorized on 401. */
export async function apiFetch(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers), cache: "no-store" });
  if (response.status === 401) {
    await response.body?.cancel();
    throw new Unauthorized();
  }
  return response;
}

/** The message of an OpenAI error envelope ({"error": {"message": ...}}), else the status line. */
export async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return typeof body.error === "string" ? body.error : body.error.message || JSON.stringify(body.error);
  } catch {
    /* not JSON: fall through to the status */
  }
  return `${response.status} ${response.statusText}`.trim();
}

/** Check a key against the API without keeping it: true when the gateway accepts it. */
export async function tryKey(key) {
  const response = await fetch("/v1/dashboard/state", {
    headers: { Authorization: `Bearer ${key}` },
    cache: "no-store",
  });
  await response.body?.cancel();
  if (response.status === 401) return false;
  if (!response.ok) throw new Error(`the gateway answered ${response.status}`);
  return true;
}

/**
 * Split a text/event-stream body into events. Calls onEvent(name, data) for each; returns
 * when the body ends. Follows the SSE rules that matter here: "event:" and "data:" fields
 * (several data lines joined by \n), a blank line ends an event, ":" lines are comments.
 */
export async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let name = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer[nl] === "\r" && buffer[nl + 1] === "\n" ? 2 : 1));
        if (line === "") {
          if (data.length) onEvent(name || "message", data.join("\n"));
          name = "";
          data = [];
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "event") name = val;
          else if (field === "data") data.push(val);
        }
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * Keep the dashboard stream open: onState("connecting"|"live"|"reconnecting"|"signed-out"),
 * onSnapshot(doc), onUpdate(doc). Reconnects by itself after 1 s, backing off to 5 s; a 401
 * stops it until start() is called again (after sign-in). A silent stream (no message for
 * `staleMs`) is dropped and reopened: the gateway sends an update every interval.
 */
export class DashboardStream {
  constructor({ onState, onSnapshot, onUpdate, staleMs = 10000 }) {
    this.onState = onState;
    this.onSnapshot = onSnapshot;
    this.onUpdate = onUpdate;
    this.staleMs = staleMs;
    this.controller = null;
    this.generation = 0;
    this.state = "";
  }

  _set(state) {
    if (this.state !== state) {
      this.state = state;
      this.onState(state);
    }
  }

  /** (Re)open the stream; safe to call at any time. */
  start() {
    this.stop();
    const generation = ++this.generation;
    this._set("connecting");
    this._loop(generation);
  }

  stop() {
    this.generation += 1;
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  async _loop(generation) {
    let delay = RETRY_FIRST_MS;
    while (generation === this.generation) {
      const controller = new AbortController();
      this.controller = controller;
      let watchdog = null;
      const pet = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => controller.abort(), this.staleMs);
      };
      try {
        pet();
        const response = await apiFetch("/v1/dashboard/stream", {
          signal: controller.signal,
          headers: { Accept: "text/event-stream" },
        });
        if (!response.ok) throw new Error(`stream refused: ${response.status}`);
        await readEvents(response.body, (name, data) => {
          if (generation !== this.generation) return;
          pet();
          const doc = JSON.parse(data);
          if (name === "snapshot") {
            this.onSnapshot(doc);
            this._set("live");
            delay = RETRY_FIRST_MS;
          } else if (name === "update") {
            this.onUpdate(doc);
          }
        });
      } catch (err) {
        if (err instanceof Unauthorized) {
          clearTimeout(watchdog);
          if (generation === this.generation) this._set("signed-out");
          return;
        }
        if (err.name !== "AbortError") console.debug("dashboard stream:", err.message);
      } finally {
        clearTimeout(watchdog);
      }
      if (generation !== this.generation) return;
      this._set("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(RETRY_MAX_MS, delay * 2);
    }
  }
}
