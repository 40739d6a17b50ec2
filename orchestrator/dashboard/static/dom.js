// Small DOM helpers. Text from the cluster (node names, model output, messages) is untrusted:
// it only ever reaches the page through textContent and setAttribute, never innerHTML.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an element: h("div", {class: "x", "data-testid": "y"}, child, "text", ...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** Create an SVG element (same arguments as h). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  if (!attrs) return;
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Set an element's text, touching the DOM only when it changes. */
export function text(el, value) {
  const v = value === null || value === undefined ? "" : String(value);
  if (el.textContent !== v) el.textContent = v;
}

/** Set (or remove, for null/undefined/false) an attribute, only when it changes. */
export function attr(el, name, value) {
  if (value === null || value === undefined || value === false) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
    return;
  }
  const v = value === true ? "" : String(value);
  if (el.getAttribute(name) !== v) el.setAttribute(name, v);
}

/** Show or hide an element (the hidden attribute). */
export function show(el, visible) {
  attr(el, "hidden", !visible);
}

/**
 * Reconcile `container`'s children with `items`, keyed: existing nodes are kept and updated
 * in place (so scroll, focus and hover survive), new ones made by create(item), missing ones
 * removed, and the order fixed with as few moves as possible.
 */
export function keyed(container, items, keyOf, create, update) {
  const old = new Map();
  for (const child of container.children) {
    if (child.__key !== undefined) old.set(child.__key, child);
  }
  let cursor = container.firstElementChild;
  while (cursor && cursor.__key === undefined) cursor = cursor.nextElementSibling;
  const seen = new Set();
  for (const item of items) {
    const key = keyOf(item);
    if (seen.has(key)) continue;
    seen.add(key);
    let el = old.get(key);
    if (!el) {
      el = create(item);
      el.__key = key;
    }
    update(el, item);
    if (el !== cursor) container.insertBefore(el, cursor);
    else cursor = cursor.nextElementSibling;
    while (cursor && cursor.__key === undefined) cursor = cursor.nextElementSibling;
  }
  for (const [key, el] of old) if (!seen.has(key)) el.remove();
}

/**
 * A two-column key/value list (<dl>) updated in place: rows is [[label, value], ...];
 * a value may be a string or a function(el) that fills the <dd> itself.
 */
export function kvList(dl, rows) {
  keyed(
    dl,
    rows.filter((r) => r),
    (r) => r[0],
    (r) => h("div", { class: "kv" }, h("dt", null, r[0]), h("dd")),
    (el, r) => {
      const dd = el.lastChild;
      if (typeof r[1] === "function") r[1](dd);
      else text(dd, r[1]);
    },
  );
}

/**
 * A table body updated in place: columns [{label, cell(row) -> string}], rows keyed by keyOf;
 * rowAttrs(row) gives attributes for each <tr> (test hooks).
 */
export function table(tableEl, columns, rows, keyOf, rowAttrs) {
  if (!tableEl.tHead) {
    const head = tableEl.createTHead().insertRow();
    for (const c of columns) head.append(h("th", { scope: "col", class: c.num ? "num" : null }, c.label));
    tableEl.createTBody();
  }
  keyed(
    tableEl.tBodies[0],
    rows,
    keyOf,
    (row) => h("tr", rowAttrs ? rowAttrs(row) : null, columns.map((c) => h("td", { class: c.num ? "num" : null, "data-field": c.field || null }))),
    (tr, row) => columns.forEach((c, i) => text(tr.cells[i], c.cell(row))),
  );
}

/** Remove every child. */
export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
}
