// The Voices panel: create a clone from an uploaded or recorded clip, list and delete clones. Every
// failure shows the API's own message (`error.message`), e.g. why a clip is not usable audio.

import { $, el, replaceChildren, say } from "./dom.js";
import { apiFetch, apiJson } from "./api.js";
import { publish } from "./bus.js";
import { ClipRecorder, clipFileName, recordingUnavailableReason } from "./recorder.js";

const CONFIRM_WINDOW_MS = 4000;

/** Fetch every voice and publish it (the Speak panel lists them; this panel shows the clones). */
export async function loadVoices() {
  const body = await apiJson("/v1/audio/voices");
  const voices = Array.isArray(body?.data) ? body.data : [];
  publish("voices", voices);
  renderClones(voices.filter((v) => v.cloned));
  return voices;
}

export function initVoices() {
  initUpload();
  initRecording();
  $("#clones-table").addEventListener("click", onDeleteClick);
}

async function createClone(file, filename, name, messageNode) {
  const form = new FormData();
  form.append("file", file, filename);
  if (name.trim()) form.append("name", name.trim());
  say(messageNode, "Uploading…");
  try {
    const voice = await apiJson("/v1/audio/voices", { method: "POST", body: form });
    say(messageNode, `Created “${voice.name}” (${voice.id}, ${voice.duration_s} s). Pick it under Voice in Speak.`, "ok");
    await loadVoices();
    return true;
  } catch (error) {
    say(messageNode, error.message, "error");
    return false;
  }
}

function initUpload() {
  const form = $("#upload-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = $("#upload-file").files[0];
    if (!file) return;
    if (await createClone(file, file.name, $("#upload-name").value, $("#upload-message"))) form.reset();
  });
}

function initRecording() {
  const start = $("#record-start");
  const stop = $("#record-stop");
  const upload = $("#record-upload");
  const preview = $("#record-preview");
  const time = $("#record-time");
  const message = $("#record-message");
  const unavailable = recordingUnavailableReason();
  if (unavailable) {
    start.disabled = true;
    say(message, unavailable);
    return;
  }
  const recorder = new ClipRecorder();
  let clip = null;
  let ticker = null;

  start.addEventListener("click", async () => {
    try {
      await recorder.start();
    } catch (error) {
      say(message, `Microphone: ${error.message}`, "error");
      return;
    }
    clip = null;
    upload.disabled = true;
    preview.hidden = true;
    start.disabled = true;
    stop.disabled = false;
    stop.focus(); // the next thing a keyboard user does is stop
    say(message, "Recording… speak for a few seconds, then Stop.");
    ticker = setInterval(() => {
      time.textContent = `${recorder.seconds.toFixed(1)} s`;
    }, 100);
  });

  stop.addEventListener("click", async () => {
    clearInterval(ticker);
    clip = await recorder.stop();
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(clip);
    preview.hidden = false;
    start.disabled = false;
    stop.disabled = true;
    upload.disabled = false;
    upload.focus();
    say(message, `Recorded ${(clip.size / 1024).toFixed(0)} KiB. Listen, then upload.`);
  });

  $("#record-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!clip) return;
    upload.disabled = true;
    const done = await createClone(clip, clipFileName(clip), $("#record-name").value, message);
    upload.disabled = done;
  });
}

function renderClones(clones) {
  const rows = clones.map((voice) =>
    el(
      "tr",
      { dataset: { voiceId: voice.id } },
      el("td", {}, voice.name),
      el("td", {}, el("code", {}, voice.id)),
      el("td", { className: "num" }, `${Number(voice.duration_s).toFixed(1)} s`),
      el("td", {}, voice.created_at ? new Date(voice.created_at * 1000).toLocaleString() : "–"),
      el(
        "td",
        {},
        el("button", { type: "button", className: "danger", dataset: { deleteId: voice.id }, "aria-label": `Delete ${voice.name}` }, "Delete"),
      ),
    ),
  );
  replaceChildren($("#clones-table tbody"), rows);
  $("#clones-table").hidden = clones.length === 0;
  $("#clones-empty").hidden = clones.length > 0;
}

// Deleting takes two presses of the same button (the label asks to confirm): a stray click or key
// press cannot delete a clone, and no modal dialog steals focus.
async function onDeleteClick(event) {
  const button = event.target.closest("button[data-delete-id]");
  if (!button) return;
  const message = $("#clones-message");
  if (button.dataset.armed !== "true") {
    button.dataset.armed = "true";
    button.textContent = "Confirm delete";
    setTimeout(() => {
      button.dataset.armed = "false";
      button.textContent = "Delete";
    }, CONFIRM_WINDOW_MS);
    return;
  }
  button.disabled = true;
  try {
    await apiFetch(`/v1/audio/voices/${encodeURIComponent(button.dataset.deleteId)}`, { method: "DELETE" });
    say(message, `Deleted ${button.dataset.deleteId}.`, "ok");
    await loadVoices();
  } catch (error) {
    button.disabled = false;
    say(message, error.message, "error");
  }
}
