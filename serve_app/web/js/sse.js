// A text/event-stream reader over fetch(). EventSource cannot POST a JSON body nor send an
// Authorization header, so the speech stream is read with fetch() and parsed here, as it arrives.

/**
 * Yield the parsed JSON `data` of each event in `body` (a ReadableStream of bytes). Events are
 * separated by a blank line; multi-line data is joined with "\n"; comments (":") and fields other
 * than data are ignored; data that is not JSON (e.g. "[DONE]") is skipped. Lines ending in a lone
 * \r (allowed by the spec, sent by no server we know) are not supported.
 */
export async function* readEvents(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const abort = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", abort, { once: true });
  let buffer = "";
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      // Servers end lines with \n or \r\n; normalising the whole buffer (not just the new piece)
      // also joins a \r\n split across two reads.
      buffer = (buffer + value).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event !== undefined) yield event;
      }
    }
    finished = true;
    const last = parseEvent(buffer);
    if (last !== undefined) yield last;
  } finally {
    signal?.removeEventListener("abort", abort);
    // The consumer may stop early (an error event, Stop): let the server know we are gone.
    if (!finished) abort();
  }
}

function parseEvent(block) {
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("data:")) data.push(line.slice(line.charAt(5) === " " ? 6 : 5));
  }
  if (data.length === 0) return undefined;
  try {
    return JSON.parse(data.join("\n"));
  } catch {
    return undefined;
  }
}

/** Decode base64 into bytes (atob gives a binary string; one pass copies it into a Uint8Array). */
export function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
