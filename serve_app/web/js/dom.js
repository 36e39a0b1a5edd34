// DOM helpers. Everything that came from the API goes into the page as text (textContent), never
// as HTML: a voice name or an error message is data, and the page's CSP would block a script anyway.

/** Build an element: `el("td", {className: "num"}, "12 ms", childNode)`. Strings become text nodes. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && !key.includes("-")) node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Replace an element's children (text and nodes only). */
export function replaceChildren(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/** Set text only when it changes: live regions re-announce a rewrite even of the same words. */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** Show a message in a status/alert region; `kind` styles it (info, ok, error). */
export function say(node, text, kind = "info") {
  node.textContent = text || "";
  node.dataset.kind = kind;
}

export function formatMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export function formatSeconds(s) {
  return s === null || s === undefined ? "–" : `${s.toFixed(2)} s`;
}
