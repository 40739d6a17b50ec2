// The dashboard's entry point: the header, the sign-in dialog, routing by hash
// (#/ overview, #/nodes/<id>, #/playground) and the one live stream feeding the store.

import { h, text, attr, show } from "./dom.js";
import { DashboardStream, getKey, setKey, clearKey, tryKey } from "./api.js";
import { Store } from "./store.js";
import { assignColors } from "./colors.js";
import { Overview } from "./overview.js";
import { NodePage } from "./node.js";
import { Playground } from "./playground.js";

const LIVE_TEXT = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…", "signed-out": "signed out" };

const store = new Store();

// Header.
const live = h("span", { class: "live", "data-testid": "live", "data-state": "connecting", role: "status" }, h("i"), h("span", null, LIVE_TEXT.connecting));
const nodesUp = h("span", { class: "chip", "data-field": "nodes-up", hidden: true });
const policy = h("span", { class: "chip", "data-field": "policy", hidden: true });
const signout = h("button", { type: "button", class: "quiet", "data-testid": "signout", hidden: true }, "Sign out");
const navOverview = h("a", { href: "#/", "data-testid": "nav-overview" }, "Overview");
const navPlayground = h("a", { href: "#/playground", "data-testid": "nav-playground" }, "Playground");
const header = h(
  "header",
  { class: "top" },
  h("a", { class: "brand", href: "#/" }, h("img", { src: "icon.svg", alt: "", width: 22, height: 22 }), h("b", null, "llamaherd")),
  h("div", { class: "status-line" }, nodesUp, policy, live),
  h("nav", null, navOverview, navPlayground, signout),
);
const main = h("main");

// Sign-in dialog (shown when the gateway answers 401).
const keyInput = h("input", { type: "password", "data-testid": "api-key", id: "api-key", autocomplete: "current-password", required: true, placeholder: "API key" });
const signinError = h("p", { class: "error", "data-testid": "signin-error", "aria-live": "assertive" });
const signinButton = h("button", { type: "submit", class: "primary", "data-testid": "signin-submit" }, "Sign in");
const signinForm = h(
  "form",
  { method: "dialog" },
  h("h2", null, "Sign in"),
  h("p", null, "This gateway requires its API key. It is kept in this tab only (sessionStorage) and sent as a header."),
  h("label", { for: "api-key" }, "API key"),
  keyInput,
  signinError,
  h("div", { class: "buttons" }, signinButton),
);
const signin = h("dialog", { class: "signin", "data-testid": "signin", "aria-labelledby": "signin-title" }, signinForm);
signinForm.firstChild.id = "signin-title";
document.body.append(header, main, signin);

function askForKey() {
  if (!signin.open) {
    text(signinError, "");
    keyInput.value = "";
    signin.showModal();
    keyInput.focus();
  }
}

signin.addEventListener("cancel", (e) => e.preventDefault()); // nothing to show without a key
signinForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return;
  signinButton.disabled = true;
  text(signinError, "");
  try {
    if (await tryKey(key)) {
      setKey(key);
      signin.close();
      show(signout, true);
      stream.start();
      if (current && current.enter) current.enter();
    } else {
      text(signinError, "The gateway refused that key.");
      keyInput.select();
    }
  } catch (err) {
    text(signinError, `Could not check the key: ${err.message}`);
  } finally {
    signinButton.disabled = false;
  }
});

signout.addEventListener("click", () => {
  clearKey();
  forget();
  show(signout, false);
  stream.start(); // without a key: live again where none is needed, else the sign-in dialog
});
show(signout, !!getKey());

// The stream.
const stream = new DashboardStream({
  onState(state) {
    attr(live, "data-state", state);
    text(live.lastChild, LIVE_TEXT[state] || state);
    if (state === "signed-out") {
      forget();
      askForKey();
    }
    overview.waitingFor(state);
  },
  onSnapshot: (doc) => store.applySnapshot(doc),
  onUpdate: (doc) => store.applyUpdate(doc),
});

// Views and routing.
const overview = new Overview(store);
const playground = new Playground({ onUnauthorized: askForKey });
let current = null;
let nodePage = null;

function route() {
  const hash = location.hash || "#/";
  let view;
  const nodeMatch = /^#\/nodes\/(.+)$/.exec(hash);
  if (nodeMatch) {
    const id = decodeURIComponent(nodeMatch[1]);
    if (!nodePage || nodePage.id !== id) nodePage = new NodePage(store, id);
    view = nodePage;
  } else if (hash === "#/playground") {
    view = playground;
  } else {
    view = overview;
  }
  if (view !== current) {
    if (current && current.leave) current.leave();
    current = view;
    main.replaceChildren(view.el);
    window.scrollTo(0, 0);
    if (view.enter) view.enter();
    if (view.update) view.update();
  }
  attr(navOverview, "aria-current", view === overview ? "page" : null);
  attr(navPlayground, "aria-current", view === playground ? "page" : null);
}

// Render at most once a frame, whatever the number of messages.
let pending = false;
function render() {
  pending = false;
  const nodes = store.nodes();
  assignColors(nodes.map((n) => n.status.node_id));
  const up = nodes.filter((n) => n.up).length;
  show(nodesUp, !!store.doc);
  text(nodesUp, `${up}/${nodes.length} nodes up`);
  attr(nodesUp, "class", `chip ${nodes.length && up === nodes.length ? "ok" : up ? "warn" : "bad"}`);
  const pol = store.doc && store.doc.cluster && store.doc.cluster.routing_policy;
  text(policy, pol ? `routing: ${pol}` : "");
  show(policy, !!pol);
  document.title = `llamaherd · ${up}/${nodes.length} up`;
  if (current && current.update) current.update();
}
store.subscribe(() => {
  if (!pending) {
    pending = true;
    requestAnimationFrame(render);
  }
});

/** Drop every figure of the cluster from the page (signed out). */
function forget() {
  store.clear();
  if (nodePage) {
    const id = nodePage.id;
    nodePage = null;
    if (current && current.id === id) {
      current = null;
      route();
    }
  }
}

window.addEventListener("hashchange", route);
route();
stream.start();
