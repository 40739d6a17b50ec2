// One stable colour per node, used everywhere on the page (cards, replicas, split bars).
// The colour comes from a hash of the node's id, so it survives reloads; two nodes whose
// hashes collide within this page take the next free colour instead.

const PALETTE = [
  "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#3ba3c7",
  "#8cd17d", "#d37295",
];

const assigned = new Map();
const taken = new Set();

function hash(id) {
  let x = 2166136261;
  for (let i = 0; i < id.length; i += 1) {
    x ^= id.charCodeAt(i);
    x = Math.imul(x, 16777619);
  }
  return x >>> 0;
}

/** The node's colour (a CSS colour string). */
export function nodeColor(id) {
  let c = assigned.get(id);
  if (c) return c;
  const start = hash(id) % PALETTE.length;
  for (let i = 0; i < PALETTE.length; i += 1) {
    const candidate = PALETTE[(start + i) % PALETTE.length];
    if (!taken.has(candidate)) {
      c = candidate;
      break;
    }
  }
  c = c || PALETTE[start]; // more nodes than colours: share
  assigned.set(id, c);
  taken.add(c);
  return c;
}

/** Series colours for charts that are not about one node. */
export const SERIES = { a: "#4e79a7", b: "#e15759", c: "#59a14f", d: "#f28e2b" };
