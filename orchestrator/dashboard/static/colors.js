// One colour per node, used everywhere on the page (cards, sparklines, replicas, split
// bars, charts). Colours are handed out in order of first use from a palette of clearly
// different hues; the app asks for every node's colour in sorted id order before drawing,
// so the same cluster gets the same colours on every load.

const PALETTE = [
  "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1",
  "#edc948", "#76b7b2", "#9c755f", "#ff9da7", "#8c8c8c",
];

const assigned = new Map();

/** The node's colour (a CSS colour string); an id seen for the first time takes the next one. */
export function nodeColor(id) {
  let c = assigned.get(id);
  if (!c) {
    c = PALETTE[assigned.size % PALETTE.length];
    assigned.set(id, c);
  }
  return c;
}

/** Give the nodes their colours in a stable order (sorted ids) before anything draws them. */
export function assignColors(ids) {
  for (const id of [...ids].sort()) nodeColor(id);
}

/** Series colours for charts that are not about one node. */
export const SERIES = { a: "#4e79a7", b: "#e15759", c: "#59a14f", d: "#f28e2b" };
