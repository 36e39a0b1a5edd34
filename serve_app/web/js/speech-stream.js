// POST /v1/audio/speech, streamed, as one sequence of events whichever way the server streams:
// the SSE stream (`stream_format: "sse"`: base64 audio deltas, word timestamps, usage) where the
// server has it, else the plain chunked body. Audio bytes are handed on as they arrive; nothing
// waits for the whole answer.

import { ApiError, apiFetch } from "./api.js";
import { speechCapabilities } from "./capabilities.js";
import { base64ToBytes, readEvents } from "./sse.js";

export const DEFAULT_PCM_RATE = 24000; // OpenAI's pcm: 24 kHz s16le mono

/**
 * Stream speech for `request` (the JSON body, without stream_format). Yields, in order:
 *   {type: "start", transport: "sse" | "chunked", engine, sampleRate, contentType}
 *   {type: "audio", bytes}                      response_format bytes, as received
 *   {type: "word", word, start_s, end_s}        SSE with timestamps only
 *   {type: "engine", engine, text}              an event that names the engine of a later sentence
 *   {type: "done", usage}
 * Throws ApiError carrying the API's message, before or during the stream.
 */
export async function* streamSpeech(request, signal) {
  const caps = await speechCapabilities();
  if (caps.sse || !caps.known) {
    try {
      yield* sseSpeech(request, signal);
      return;
    } catch (error) {
      // Only when the schema could not tell: a server without SSE rejects stream_format with 422
      // before anything was yielded, and the plain body is the way.
      if (caps.known || !(error instanceof ApiError && error.status === 422 && /stream_format/.test(error.message))) {
        throw error;
      }
      caps.known = true;
      caps.sse = false;
    }
  }
  yield* plainSpeech(request, signal);
}

function post(body, signal) {
  return apiFetch("/v1/audio/speech", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
}

function startEvent(response, request, transport) {
  return {
    type: "start",
    transport,
    engine: response.headers.get("X-TTS-Engine"),
    sampleRate: Number(response.headers.get("X-Sample-Rate")) || request.sample_rate || DEFAULT_PCM_RATE,
    contentType: response.headers.get("Content-Type") || "",
  };
}

async function* sseSpeech(request, signal) {
  const response = await post({ ...request, stream_format: "sse", timestamps: true }, signal);
  if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
    // A server that ignored stream_format answered with audio: play it all the same.
    yield* audioBody(response, request, signal);
    return;
  }
  yield startEvent(response, request, "sse");
  for await (const event of readEvents(response.body, signal)) {
    if (typeof event?.engine === "string") yield { type: "engine", engine: event.engine, text: event.text ?? null };
    switch (event?.type) {
      case "speech.audio.delta":
        yield { type: "audio", bytes: base64ToBytes(event.audio) };
        break;
      case "speech.word":
        yield { type: "word", word: String(event.word), start_s: Number(event.start_s), end_s: Number(event.end_s) };
        break;
      case "speech.audio.done":
        yield { type: "done", usage: event.usage ?? null };
        return;
      case "error":
        throw new ApiError(response.status, event.error?.message || "the speech stream failed", event.error?.code ?? null);
      default:
        break; // event types added later are not errors
    }
  }
  throw new ApiError(response.status, "the speech stream ended before speech.audio.done (connection cut?)");
}

async function* plainSpeech(request, signal) {
  yield* audioBody(await post(request, signal), request, signal);
}

async function* audioBody(response, request, signal) {
  yield startEvent(response, request, "chunked");
  const reader = response.body.getReader();
  let finished = false;
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (signal?.aborted) throw error;
        // The server ends the transfer early when every engine failed after audio was sent.
        throw new ApiError(response.status, `the audio stream was cut before its end (${error.message})`);
      }
      if (chunk.done) break;
      yield { type: "audio", bytes: chunk.value };
    }
    finished = true;
    yield { type: "done", usage: null };
  } finally {
    if (!finished) reader.cancel().catch(() => {});
  }
}
