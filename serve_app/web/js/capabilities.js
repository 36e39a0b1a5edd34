// What this server's speech endpoint accepts, read from its own OpenAPI schema, so the page uses the
// SSE stream (word timestamps, lowest latency) where the server has it and the plain chunked body
// where it does not, without sending a request that is known to fail (a 422 would also log a
// console error). `?transport=sse|pcm` in the page's address forces one, for testing and debugging.

let cached = null;

/** {sse, timestamps, normalize, known}; `known` is false when the schema could not be read. */
export function speechCapabilities() {
  cached ??= detect();
  return cached;
}

async function detect() {
  const forced = new URLSearchParams(location.search).get("transport");
  let caps = { sse: false, timestamps: false, normalize: false, known: false };
  try {
    const response = await fetch("/openapi.json");
    if (response.ok) caps = fromSchema(await response.json());
  } catch {
    // No schema (docs turned off, a proxy in the way): the speech module then tries SSE and falls
    // back on a 422 that names stream_format.
  }
  if (forced === "sse" || forced === "pcm") caps = { ...caps, sse: forced === "sse" };
  return caps;
}

function fromSchema(schema) {
  const body = schema?.paths?.["/v1/audio/speech"]?.post?.requestBody?.content?.["application/json"]?.schema;
  const props = resolve(schema, body)?.properties;
  if (!props) return { sse: false, timestamps: false, normalize: false, known: false };
  return {
    sse: allows(schema, props.stream_format, "sse"),
    timestamps: "timestamps" in props,
    normalize: "normalize" in props,
    known: true,
  };
}

/** Whether `value` is among the enum/const values anywhere in `node` (following $refs, bounded). */
function allows(schema, node, value, depth = 0) {
  node = resolve(schema, node);
  if (!node || typeof node !== "object" || depth > 6) return false;
  if (node.const === value || (Array.isArray(node.enum) && node.enum.includes(value))) return true;
  return Object.values(node).some((child) => allows(schema, child, value, depth + 1));
}

/** Follow a local "$ref" (#/components/...). */
function resolve(schema, node) {
  const ref = node?.$ref;
  if (!ref || !ref.startsWith("#/")) return node;
  return ref.slice(2).split("/").reduce((at, key) => at?.[key], schema);
}
