// Start-up: wire each panel, then load what they show. Each module does one job; this one only
// calls them in order and reports a failure to load in the page rather than only in the console.

import { $, say } from "./dom.js";
import { getApiKey, setApiKey } from "./api.js";
import { subscribe } from "./bus.js";
import { initSpeak } from "./speak.js";
import { initStatus, refresh } from "./status.js";
import { initTabs } from "./tabs.js";
import { initVoices, loadVoices } from "./voices.js";

function initApiKey() {
  const input = $("#api-key");
  const state = $("#key-state");
  const show = () => say(state, getApiKey() ? "key set for this tab" : "");
  input.value = getApiKey();
  show();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    show();
    reload();
  });
  $("#key-forget").addEventListener("click", () => {
    setApiKey("");
    input.value = "";
    show();
    reload();
  });
}

// Whether the last voice list load failed; the status poll then tries again, so a page opened
// during a database outage (or a dropped connection) fills itself in once the service is back.
let voicesMissing = false;
let voicesLoading = false;

async function reloadVoices() {
  voicesLoading = true;
  try {
    await loadVoices();
    voicesMissing = false;
    say($("#clones-message"), "");
    if ($("#speak-message").textContent.startsWith("Voices:")) say($("#speak-message"), "");
  } catch (error) {
    voicesMissing = true;
    // 401 without a key is the common case; the message says so in the API's words.
    say($("#clones-message"), `Voices: ${error.message}`, "error");
    say($("#speak-message"), `Voices: ${error.message}`, "error");
  } finally {
    voicesLoading = false;
  }
}

function reload() {
  reloadVoices();
  refresh();
}

initTabs();
initApiKey();
initSpeak();
initVoices();
reloadVoices();
initStatus();
subscribe("engines", () => {
  if (voicesMissing && !voicesLoading) reloadVoices();
});
