// Start-up: wire each panel, then load what they show. Each module does one job; this one only
// calls them in order and reports a failure to load in the page rather than only in the console.

import { $, say } from "./dom.js";
import { getApiKey, setApiKey } from "./api.js";
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

async function reloadVoices() {
  try {
    await loadVoices();
    say($("#clones-message"), "");
  } catch (error) {
    // 401 without a key is the common case; the message says so in the API's words.
    say($("#clones-message"), `Voices: ${error.message}`, "error");
    say($("#speak-message"), `Voices: ${error.message}`, "error");
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
