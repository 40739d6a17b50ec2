// The playground (#/playground): chat with a served model through the gateway's own
// OpenAI API, streaming, with the serving node, TTFT and tokens/s of each reply.
// The model's output is untrusted text: it is only ever set with textContent.

import { h, text, attr, show, clear } from "./dom.js";
import { apiFetch, errorMessage, readEvents, Unauthorized } from "./api.js";
import { swatch } from "./overview.js";

export class Playground {
  constructor({ onUnauthorized }) {
    this.onUnauthorized = onUnauthorized;
    this.history = []; // [{role, content}] sent with each request
    this.controller = null;
    this.model = h("select", { "data-testid": "pg-model", id: "pg-model" });
    this.modelNote = h("span", { class: "muted" });
    this.system = h("textarea", { "data-testid": "pg-system", id: "pg-system", rows: 3, placeholder: "You are a helpful assistant." });
    this.temperature = h("input", { "data-testid": "pg-temperature", id: "pg-temperature", type: "number", min: 0, max: 2, step: 0.1, value: "0.7" });
    this.maxTokens = h("input", { "data-testid": "pg-max-tokens", id: "pg-max-tokens", type: "number", min: 1, max: 32768, step: 1, value: "256" });
    this.input = h("textarea", { "data-testid": "pg-input", rows: 3, placeholder: "Say something (Enter sends, Shift+Enter for a new line)", "aria-label": "Message" });
    this.send = h("button", { "data-testid": "pg-send", type: "submit", class: "primary" }, "Send");
    this.stop = h("button", { "data-testid": "pg-stop", type: "button", disabled: true }, "Stop");
    this.reset = h("button", { type: "button", class: "quiet" }, "New chat");
    this.messages = h("div", { class: "messages", "aria-live": "polite" });
    this.empty = h("p", { class: "muted empty-chat" }, "Pick a model and say hello. Replies stream from whichever node the gateway routes to.");
    const form = h(
      "form",
      { class: "composer" },
      this.input,
      h("div", { class: "buttons" }, this.reset, this.stop, this.send),
    );
    this.el = h(
      "div",
      { class: "playground" },
      h(
        "aside",
        { class: "panel settings" },
        h("h2", null, "Settings"),
        h("label", { for: "pg-model" }, "Model"),
        this.model,
        this.modelNote,
        h("label", { for: "pg-system" }, "System prompt"),
        this.system,
        h("div", { class: "pair" }, h("div", null, h("label", { for: "pg-temperature" }, "Temperature"), this.temperature), h("div", null, h("label", { for: "pg-max-tokens" }, "Max tokens"), this.maxTokens)),
      ),
      h("section", { class: "panel chat" }, h("h2", null, "Chat"), this.messages, this.empty, form),
    );
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.submit();
      }
    });
    this.stop.addEventListener("click", () => this.controller && this.controller.abort());
    this.reset.addEventListener("click", () => {
      if (this.controller) this.controller.abort();
      this.history = [];
      clear(this.messages);
      show(this.empty, true);
    });
  }

  /** Called when the page shows the playground: (re)load the model list. */
  async enter() {
    clearTimeout(this.retry);
    try {
      const response = await apiFetch("/v1/models");
      if (!response.ok) throw new Error(await errorMessage(response));
      const body = await response.json();
      const ids = (body.data || []).filter((m) => !(m.meta && m.meta.embedding)).map((m) => m.id).sort();
      const current = this.model.value;
      const same = ids.length === this.model.options.length && ids.every((id, i) => this.model.options[i].value === id);
      if (!same) {
        clear(this.model);
        for (const id of ids) this.model.append(h("option", { value: id }, id));
        if (ids.includes(current)) this.model.value = current;
      }
      text(this.modelNote, ids.length ? "" : "No model is ready yet; checking again in a few seconds.");
      this.send.disabled = !ids.length || !!this.controller;
      if (!ids.length) this.retry = setTimeout(() => this.enter(), 3000);
    } catch (err) {
      if (err instanceof Unauthorized) this.onUnauthorized();
      else {
        text(this.modelNote, `Could not list models: ${err.message}`);
        this.retry = setTimeout(() => this.enter(), 3000);
      }
    }
  }

  leave() {
    clearTimeout(this.retry);
  }

  _message(role, content) {
    const body = h("div", { class: "content" }, content);
    const el = h("div", { class: `message ${role}`, "data-testid": "pg-message", "data-role": role }, h("div", { class: "who" }, role === "user" ? "you" : this.model.value || "assistant"), body);
    this.messages.append(el);
    show(this.empty, false);
    el.scrollIntoView({ block: "end" });
    return el;
  }

  async submit() {
    const prompt = this.input.value.trim();
    const model = this.model.value;
    if (!prompt || !model || this.controller) return;
    this.input.value = "";
    this._message("user", prompt);
    this.history.push({ role: "user", content: prompt });
    const reply = this._message("assistant", "");
    const content = reply.lastChild;
    reply.classList.add("pending");

    const messages = [];
    if (this.system.value.trim()) messages.push({ role: "system", content: this.system.value.trim() });
    messages.push(...this.history);
    const body = { model, messages, stream: true, stream_options: { include_usage: true } };
    const temperature = parseFloat(this.temperature.value);
    if (Number.isFinite(temperature)) body.temperature = temperature;
    const maxTokens = parseInt(this.maxTokens.value, 10);
    if (Number.isFinite(maxTokens) && maxTokens > 0) body.max_tokens = maxTokens;

    const controller = new AbortController();
    this.controller = controller;
    this.send.disabled = true;
    this.stop.disabled = false;
    const started = performance.now();
    let first = null;
    let last = null;
    let chunks = 0;
    let usage = null;
    let node = "";
    let answer = "";
    let failure = "";
    let stopped = false;
    try {
      const response = await apiFetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      node = response.headers.get("x-llamaherd-node") || "";
      if (!response.ok) {
        failure = await errorMessage(response);
      } else {
        await readEvents(response.body, (_name, data) => {
          if (data === "[DONE]") return;
          const chunk = JSON.parse(data);
          if (chunk.error) {
            failure = chunk.error.message || JSON.stringify(chunk.error);
            return;
          }
          if (chunk.usage) usage = chunk.usage;
          if (chunk.migrated_to) node = chunk.migrated_to;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            const now = performance.now();
            if (first === null) first = now;
            last = now;
            chunks += 1;
            answer += delta.content;
            content.textContent = answer;
            if (this._nearBottom()) reply.scrollIntoView({ block: "end" });
          }
        });
      }
    } catch (err) {
      if (err.name === "AbortError") stopped = true;
      else if (err instanceof Unauthorized) {
        failure = "The gateway wants an API key.";
        this.onUnauthorized();
      } else failure = err.message;
    } finally {
      this.controller = null;
      this.send.disabled = !this.model.options.length;
      this.stop.disabled = true;
      reply.classList.remove("pending");
    }

    if (answer) this.history.push({ role: "assistant", content: answer });
    else this.history.pop(); // nothing came back: do not send the question twice
    if (failure) {
      reply.classList.add("failed");
      reply.append(h("p", { class: "error", "data-testid": "pg-error" }, failure));
    }
    const tokens = usage ? usage.completion_tokens : chunks;
    const ttftMs = first === null ? null : first - started;
    const decodeS = first !== null && last !== null && tokens > 1 ? (last - first) / 1000 : null;
    const rate = decodeS ? (tokens - 1) / decodeS : null;
    const stats = h("div", { class: "stats", "data-testid": "pg-stats", "data-node": node, "data-ttft-ms": ttftMs === null ? "" : ttftMs.toFixed(0), "data-tps": rate === null ? "" : rate.toFixed(1) });
    if (node) stats.append(swatch(node), h("span", null, `served by ${node}`));
    if (failure && !answer) stats.append(h("span", null, "no reply"));
    else stats.append(h("span", null, `TTFT ${ttftMs === null ? "—" : `${ttftMs.toFixed(0)} ms`}`), h("span", null, rate === null ? "— tok/s" : `${rate.toFixed(1)} tok/s`), h("span", null, `${tokens} token${tokens === 1 ? "" : "s"}`));
    if (stopped) stats.append(h("span", { class: "badge warn" }, "stopped"));
    reply.append(stats);
    if (this._nearBottom()) reply.scrollIntoView({ block: "end" });
    attr(reply, "data-done", "true");
    this.input.focus();
  }

  _nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 200;
  }
}
