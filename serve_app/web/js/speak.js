// The Speak panel: the form becomes a speech request, the stream is played as it arrives, and the
// numbers a listener judges a TTS server by are shown (time to first audio, engine, fallback). The
// #playback element carries the same facts as data attributes, for tests and for the curious.

import { $, el, formatMs, formatSeconds, replaceChildren, say, setText } from "./dom.js";
import { current, subscribe } from "./bus.js";
import { speechCapabilities } from "./capabilities.js";
import { FilePlayer } from "./file-player.js";
import { audioContext, PcmPlayer } from "./pcm-player.js";
import { streamSpeech } from "./speech-stream.js";
import { download, wavBlob } from "./wav.js";
import { WordTrack } from "./words.js";

const STATE_LABELS = {
  idle: "Idle",
  requesting: "Requesting…",
  buffering: "Buffering…",
  playing: "Playing",
  ended: "Finished",
  stopped: "Stopped",
  error: "Failed",
};

export function initSpeak() {
  const form = $("#speak-form");
  const ui = {
    text: $("#speak-text"),
    voice: $("#speak-voice"),
    engine: $("#speak-engine"),
    format: $("#speak-format"),
    speed: $("#speak-speed"),
    speedValue: $("#speak-speed-value"),
    instructions: $("#speak-instructions"),
    normalize: $("#speak-normalize"),
    speak: $("#speak-button"),
    stop: $("#stop-button"),
    download: $("#download-button"),
    playback: $("#playback"),
    stateText: $("#playback-state"),
    message: $("#speak-message"),
    fallbackReason: $("#fallback-reason"),
    fileAudio: $("#file-audio"),
    stats: {
      ttfa: $("#stat-ttfa"),
      engine: $("#stat-engine"),
      fallback: $("#stat-fallback"),
      transport: $("#stat-transport"),
      audio: $("#stat-audio"),
      usage: $("#stat-usage"),
    },
  };
  const words = new WordTrack($("#transcript"));
  let run = null; // the utterance in progress (or the last one, for its download)

  ui.speed.addEventListener("input", () => {
    ui.speedValue.value = `${Number(ui.speed.value).toFixed(2)}×`;
  });
  ui.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  subscribe("voices", (voices) => fillVoices(ui.voice, voices));
  subscribe("engines", (status) => fillEngines(ui.engine, status));
  speechCapabilities().then((caps) => {
    if (caps.known && !caps.normalize) {
      ui.normalize.disabled = true;
      $("#speak-normalize-hint").textContent = "This server does not offer turning it off yet.";
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    run?.dispose();
    // The AudioContext must be started inside the click's task, before any await on the network.
    const contextPromise = ui.format.value === "pcm" ? audioContext() : null;
    run = new Utterance(ui, words, requestFrom(ui));
    await run.play(contextPromise);
  });
  ui.stop.addEventListener("click", () => run?.cancel());
  ui.download.addEventListener("click", () => run?.download());
}

function requestFrom(ui) {
  const request = {
    model: "tts-1",
    input: ui.text.value,
    voice: ui.voice.value || "alloy",
    response_format: ui.format.value,
    speed: Number(ui.speed.value),
  };
  if (ui.engine.value) request.engine = ui.engine.value;
  if (ui.instructions.value.trim()) request.instructions = ui.instructions.value.trim();
  if (!ui.normalize.checked && !ui.normalize.disabled) request.normalize = false;
  return request;
}

/** One press of Speak: request, stream, play, report. */
class Utterance {
  constructor(ui, words, request) {
    this.ui = ui;
    this.words = words;
    this.request = request;
    this.controller = new AbortController();
    this.chunks = [];
    this.bytes = 0;
    this.player = null;
    this.start = null;
    this.state = "requesting";
    this.reachedPlaying = false;
    this.engines = [];
    this.timer = null;
  }

  async play(contextPromise) {
    const { ui } = this;
    say(ui.message, "");
    this.words.showText(this.request.input);
    ui.speak.disabled = true;
    ui.stop.disabled = false;
    ui.download.disabled = true;
    ui.fileAudio.hidden = true;
    for (const node of Object.values(ui.stats)) node.textContent = "–";
    ui.fallbackReason.textContent = "";
    Object.assign(ui.playback.dataset, { ttfaMs: "", engine: "", transport: "" });
    this.render();
    this.timer = setInterval(() => this.render(), 50);
    const sentAt = performance.now();
    try {
      for await (const event of streamSpeech(this.request, this.controller.signal)) {
        if (event.type === "start") {
          this.start = event;
          this.player = await this.makePlayer(event, contextPromise);
          this.showStart(event);
          if (event.transport === "sse") this.words.reset();
        } else if (event.type === "audio") {
          if (this.bytes === 0) {
            const ttfa = performance.now() - sentAt; // first audio bytes in hand, request to here
            ui.stats.ttfa.textContent = formatMs(ttfa);
            ui.playback.dataset.ttfaMs = String(Math.round(ttfa));
          }
          this.bytes += event.bytes.length;
          this.chunks.push(event.bytes);
          this.player.push(event.bytes);
        } else if (event.type === "word") {
          this.words.add(event.word, event.start_s, event.end_s);
        } else if (event.type === "engine") {
          this.noteEngine(event.engine);
        } else if (event.type === "done") {
          ui.stats.usage.textContent = usageText(event.usage);
        }
      }
      this.player?.finish();
      ui.download.disabled = this.bytes === 0;
    } catch (error) {
      if (this.controller.signal.aborted) return;
      this.player?.finish();
      this.state = "error";
      say(ui.message, error.message || String(error), "error");
      ui.download.disabled = this.bytes === 0;
      this.finishUi();
    }
  }

  async makePlayer(start, contextPromise) {
    const onEnded = () => {
      this.words.finish();
      this.finishUi();
    };
    if (this.request.response_format === "pcm") {
      return new PcmPlayer(await contextPromise, start.sampleRate, onEnded);
    }
    return new FilePlayer(this.ui.fileAudio, start.contentType, onEnded);
  }

  showStart(start) {
    const { ui } = this;
    ui.stats.transport.textContent = start.transport === "sse" ? "SSE (audio deltas + word times)" : "chunked body";
    ui.playback.dataset.transport = start.transport;
    this.noteEngine(start.engine);
  }

  /** The engine that spoke, and whether that was a fallback from the chain's first choice. */
  noteEngine(engine) {
    if (!engine || this.engines.at(-1) === engine) return;
    this.engines.push(engine);
    const { ui } = this;
    ui.stats.engine.textContent = this.engines.join(" → ");
    ui.playback.dataset.engine = this.engines.join(",");
    const fallback = describeFallback(this.request.engine, this.engines, current("engines"));
    ui.stats.fallback.textContent = fallback.summary;
    setText(ui.fallbackReason, fallback.why);
  }

  cancel() {
    this.controller.abort();
    this.player?.stop();
    if (this.state !== "error") this.state = "stopped";
    this.finishUi();
  }

  /** A new utterance replaces this one: silence it and free what it holds. */
  dispose() {
    this.cancel();
    this.player?.dispose();
  }

  finishUi() {
    const { ui } = this;
    ui.speak.disabled = false;
    ui.stop.disabled = true;
    this.render();
    clearInterval(this.timer);
  }

  download() {
    if (this.bytes === 0) return;
    const format = this.request.response_format;
    const blob =
      format === "pcm"
        ? wavBlob(this.chunks, this.start.sampleRate)
        : new Blob(this.chunks, { type: this.start.contentType || "application/octet-stream" });
    download(blob, `speech.${format === "pcm" ? "wav" : format}`);
  }

  /** Mirror the player into the page: label, stats, highlight, and the data attributes. */
  render() {
    const { ui, player } = this;
    if (player && this.state !== "error" && this.state !== "stopped") this.state = player.state;
    if (this.state === "playing") this.reachedPlaying = true;
    const decoded = player ? player.decodedSeconds : 0;
    const position = player ? player.position : 0;
    if (player && this.start?.transport === "sse") this.words.highlight(position);
    setText(ui.stateText, STATE_LABELS[this.state] ?? this.state);
    let audio = this.bytes ? `${formatSeconds(decoded)} · ${(this.bytes / 1024).toFixed(0)} KiB` : "–";
    if (player?.gaps) audio += ` · ${player.gaps} gap(s)`; // playback waited for the network
    setText(ui.stats.audio, audio);
    Object.assign(ui.playback.dataset, {
      state: this.state,
      decodedSeconds: decoded.toFixed(3),
      playedSeconds: position.toFixed(3),
      reachedPlaying: String(this.reachedPlaying),
      words: String(this.words.count),
      contextState: player?.context?.state ?? "",
    });
  }
}

function usageText(usage) {
  if (!usage || typeof usage !== "object") return "–";
  return Object.entries(usage)
    .filter(([, value]) => typeof value === "number")
    .map(([key, value]) => `${value} ${key.replace(/_tokens$/, "").replaceAll("_", " ")}`)
    .join(" · ");
}

/**
 * Whether the chain's first choice spoke: a short summary for the stats, and the reasons (from the
 * engines' status) on a line of their own, since they can be long.
 */
function describeFallback(pinned, engines, status) {
  const later = engines.slice(1);
  if (pinned) return { summary: later.length ? `switched to ${later.join(", ")}` : "none (pinned)", why: "" };
  const first = status?.chain?.[0];
  if (!first || engines[0] === first) return { summary: later.length ? `mid-stream to ${later.join(", ")}` : "none", why: "" };
  const skipped = [];
  const reasons = [];
  for (const name of status.chain) {
    if (name === engines[0]) break;
    skipped.push(name);
    const engine = status.data?.find((e) => e.name === name);
    const why = engine ? engine.reason || engine.last_error || `breaker ${engine.state}` : "";
    if (why) reasons.push(`${name}: ${why}`);
  }
  return { summary: `yes, ${skipped.join(", ")} skipped`, why: reasons.length ? `Skipped ${reasons.join("; ")}` : "" };
}

// Both selects are refilled only when what they list changed: the status poll republishes every few
// seconds, and rebuilding an open <select> would close it under the user's pointer.
function unchanged(select, signature) {
  if (select.dataset.signature === signature) return true;
  select.dataset.signature = signature;
  return false;
}

function fillVoices(select, voices) {
  if (unchanged(select, JSON.stringify(voices.map((v) => [v.id, v.name, v.engine, v.cloned])))) return;
  const chosen = select.value;
  const groups = new Map();
  for (const voice of voices) {
    const group = voice.cloned ? "Cloned voices" : voice.engine === "any" ? "OpenAI names (every engine)" : `${voice.engine}`;
    if (!groups.has(group)) groups.set(group, []);
    const label = voice.cloned ? `${voice.name} (clone)` : voice.name === voice.id ? voice.id : `${voice.name} · ${voice.id}`;
    groups.get(group).push(el("option", { value: voice.id }, label));
  }
  replaceChildren(select, [...groups].map(([label, options]) => el("optgroup", { label }, options)));
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "alloy";
}

function fillEngines(select, status) {
  if (!status?.data) return;
  if (unchanged(select, JSON.stringify([status.chain, status.data.map((e) => [e.name, e.available])]))) return;
  const chosen = select.value;
  const chain = el("option", { value: "" }, `Chain: ${status.chain.join(" → ")}`);
  const pinned = status.data.map((engine) =>
    el("option", { value: engine.name }, `${engine.name} only${engine.available ? "" : " (unavailable)"}`),
  );
  replaceChildren(select, chain, pinned);
  select.value = chosen;
}
