// The panels share two facts, the voices and the engines' status, without importing each other:
// whoever loads them publishes here, whoever shows them listens. The last value is kept so a late
// listener starts with what is known.

const target = new EventTarget();
const latest = new Map();

export function publish(topic, value) {
  latest.set(topic, value);
  target.dispatchEvent(new CustomEvent(topic, { detail: value }));
}

/** Call `handler(value)` now if `topic` was published already, and on every later publish. */
export function subscribe(topic, handler) {
  target.addEventListener(topic, (event) => handler(event.detail));
  if (latest.has(topic)) handler(latest.get(topic));
}

export function current(topic) {
  return latest.get(topic);
}
