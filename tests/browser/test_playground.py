"""The web playground (`/`) in a real headless Chromium, against the live Serve application.

Debian's `chromium` and `chromium-driver` packages, driven by Selenium through /usr/bin/chromedriver
(nothing is downloaded). Chromium's fake media devices stand in for a microphone, and its autoplay
policy is relaxed so audio starts without a human click. The page exposes its playback as data
attributes on `#playback` (state, seconds decoded and heard, time to first audio, engine, stream
kind), which is what these tests read, besides the browser's console log.

Screenshots go to each test's tmp_path; with PLAYGROUND_SCREENSHOT set to a path, the Speak
screenshot is also copied there (how docs/img/playground.png is made).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-dev-shm-usage",  # containers have a small /dev/shm
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
    "--use-fake-device-for-media-stream",  # ...and make it a synthetic one
    "--window-size=1280,800",
)
SHIM = Path(__file__).with_name("sse_shim.js")
TEXT = "Hello from the playground. This sentence gives the browser well over a second of audio to play."
WAIT_S = 20.0
# Records the Authorization header of every fetch() the page makes.
AUTH_RECORDER = """
window.__auth = [];
const realFetch = window.fetch.bind(window);
window.fetch = (input, init = {}) => {
  const url = typeof input === "string" ? input : input.url;
  window.__auth.push([url, new Headers(init.headers || {}).get("Authorization")]);
  return realFetch(input, init);
};
"""


def _missing_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} not found (apt-get install -y chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    problem = _missing_browser()
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(problem)
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def page(driver: Any, serve_url: str) -> Iterator[Any]:
    """The driver at a 1280x800 viewport with an empty console log; scripts injected by a test are
    removed afterwards."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
    )
    driver.get("about:blank")
    driver.get_log("browser")  # drain what earlier tests left
    driver.injected = []
    try:
        yield driver
    finally:
        for identifier in driver.injected:
            driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": identifier})
        if driver.current_url.startswith("http"):
            driver.execute_script("sessionStorage.clear()")


def inject(driver: Any, source: str) -> None:
    """Run `source` in every document this tab loads from now on, before the page's own scripts."""
    result = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})
    driver.injected.append(result["identifier"])


def wait_for(
    condition: Callable[[], Any], what: str, timeout: float = WAIT_S, explain: Callable[[], str] | None = None
) -> Any:
    """`condition()` once it is truthy; on timeout an AssertionError with what `explain()` says."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" ({explain()})" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(0.1)


def console_errors(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def playback(driver: Any) -> dict[str, str]:
    return driver.execute_script("return Object.assign({}, document.getElementById('playback').dataset)")


def page_report(driver: Any) -> str:
    """What the page said about a failure: its message lines and the console's errors."""
    messages = driver.execute_script(
        "return [...document.querySelectorAll('[id$=\"-message\"]')]"
        ".filter(e => e.textContent.trim()).map(e => `${e.id}: ${e.textContent.trim()}`)"
    )
    return "; ".join([*messages, *console_errors(driver)]) or "the page reported nothing"


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    wait_loaded(driver)


def wait_loaded(driver: Any) -> None:
    """Until the page has loaded: the voices are listed and the first status poll has come back."""
    wait_for(
        lambda: driver.execute_script("return document.querySelectorAll('#speak-voice option').length > 5"),
        "the voice list",
        explain=lambda: page_report(driver),
    )
    wait_for(
        lambda: driver.execute_script("return document.querySelectorAll('#engines-table tbody tr').length > 0"),
        "the engine status",
        explain=lambda: page_report(driver),
    )


def speak(driver: Any, text: str = TEXT) -> dict[str, str]:
    """Type `text`, press Speak, wait until audio has played; the final playback attributes."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "speak-text")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "speak-button").click()
    wait_for(
        lambda: playback(driver)["reachedPlaying"] == "true" or playback(driver)["state"] == "error",
        "playback to start",
    )
    state = wait_for(
        lambda: (p := playback(driver)) and (p["state"] in ("ended", "error") or float(p["playedSeconds"]) > 0.6) and p,
        "a second of audio to play",
    )
    message = driver.find_element(By.ID, "speak-message").text
    assert state["state"] != "error", f"speech failed in the page: {message}"
    return state


def test_page_loads_with_voices_and_engine_status(page: Any, serve_url: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    open_page(page, f"{serve_url}/")
    assert page.title.startswith("voice-tts-serve")
    voices = page.execute_script("return [...document.querySelectorAll('#speak-voice option')].map(o => o.value)")
    assert "alloy" in voices
    api_engines = httpx.get(f"{serve_url}/v1/engines", timeout=30).json()
    page.get(f"{serve_url}/#status")
    rows = wait_for(lambda: page.find_elements(By.CSS_SELECTOR, "#engines-table tbody tr"), "engine rows")
    shown = [row.get_attribute("data-engine") for row in rows]
    assert shown == [e["name"] for e in api_engines["data"]]
    assert all(row.is_displayed() for row in rows)
    wait_for(lambda: page.find_element(By.ID, "ready-badge").text == "Ready", "the ready badge")
    assert "sqlite" in page.find_element(By.ID, "db-stats").text
    assert page.find_element(By.ID, "dashboard-link").get_attribute("href").endswith(":8265/")
    page.save_screenshot(str(tmp_path / "status.png"))
    assert console_errors(page) == []


@pytest.mark.parametrize("query", ["", "?transport=pcm"], ids=["offered-stream", "chunked-body"])
def test_speak_streams_and_plays_audio(page: Any, serve_url: str, tmp_path: Path, query: str) -> None:
    """The stream the server offers (SSE where its schema has it, else the chunked body) plays live;
    so does the chunked body when forced, so that path stays tested once the server has SSE."""
    from selenium.webdriver.common.by import By

    offers_sse = '"sse"' in httpx.get(f"{serve_url}/openapi.json", timeout=30).text
    open_page(page, f"{serve_url}/{query}")
    state = speak(page)
    assert state["transport"] == ("sse" if offers_sse and not query else "chunked")
    assert state["reachedPlaying"] == "true"
    assert state["contextState"] == "running"
    wait_for(lambda: float(playback(page)["decodedSeconds"]) > 0.5, "more than 0.5 s of audio decoded")
    assert state["engine"], "the engine that spoke is shown"
    assert page.find_element(By.ID, "stat-engine").text == state["engine"].replace(",", " → ")
    assert int(state["ttfaMs"]) > 0
    assert page.find_element(By.ID, "stat-fallback").text not in ("", "\u2013")  # the page's "nothing yet" dash
    wait_for(lambda: page.find_element(By.ID, "download-button").is_enabled(), "the download, once all audio is in")
    page.save_screenshot(str(tmp_path / "speak.png"))
    if (target := os.environ.get("PLAYGROUND_SCREENSHOT")) and not query:
        shutil.copyfile(tmp_path / "speak.png", target)
    assert console_errors(page) == []


def test_compressed_format_plays_in_an_audio_element(page: Any, serve_url: str) -> None:
    """mp3 and the other containers are decoded by an <audio> element once the file is in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(page, f"{serve_url}/")
    Select(page.find_element(By.ID, "speak-format")).select_by_value("mp3")
    state = speak(page)
    assert state["reachedPlaying"] == "true"
    wait_for(lambda: float(playback(page)["decodedSeconds"]) > 0.5, "the file's duration")
    audio = page.find_element(By.ID, "file-audio")
    assert audio.is_displayed()
    assert page.execute_script("return document.getElementById('file-audio').currentTime") > 0
    assert console_errors(page) == []


def test_sse_stream_plays_and_highlights_words(page: Any, serve_url: str, tmp_path: Path) -> None:
    """The SSE code path: base64 deltas, word events, done. Through the real service's SSE when it
    has it; otherwise through tests/browser/sse_shim.js, which re-frames the real PCM answer."""
    from selenium.webdriver.common.by import By

    schema = httpx.get(f"{serve_url}/openapi.json", timeout=30).text
    real_sse = '"sse"' in schema
    if not real_sse:
        inject(page, SHIM.read_text())
    open_page(page, f"{serve_url}/?transport=sse")
    speak(page, "Each word lights up as it is spoken, one after another.")
    wait_for(lambda: int(playback(page)["words"]) > 3, "word timestamps")
    wait_for(lambda: page.find_elements(By.CSS_SELECTOR, "#transcript .word.current"), "a highlighted word")
    page.save_screenshot(str(tmp_path / "sse-playing.png"))
    state = playback(page)
    assert state["transport"] == "sse"
    assert float(state["decodedSeconds"]) > 0.5
    if not real_sse:
        assert page.execute_script("return window.__sseShim.requests") == 1
    wait_for(lambda: playback(page)["state"] == "ended", "the end of playback")
    assert "input" in page.find_element(By.ID, "stat-usage").text  # usage from speech.audio.done
    assert len(page.find_elements(By.CSS_SELECTOR, "#transcript .word.spoken")) == int(playback(page)["words"])
    page.save_screenshot(str(tmp_path / "sse.png"))
    assert console_errors(page) == []


# The page's first voice-list request fails as a dropped connection does; later ones go through.
FIRST_VOICE_LIST_FAILS = """
const passFetch = window.fetch.bind(window);
let voiceListsFailed = 0;
window.fetch = (input, init) => {
  const url = typeof input === "string" ? input : input.url;
  if (url.endsWith("/v1/audio/voices") && !(init && init.method) && voiceListsFailed++ === 0) {
    return Promise.reject(new TypeError("Failed to fetch"));
  }
  return passFetch(input, init);
};
"""


def test_voice_list_fills_in_by_itself_after_a_failed_load(page: Any, serve_url: str) -> None:
    from selenium.webdriver.common.by import By

    inject(page, FIRST_VOICE_LIST_FAILS)
    page.get(f"{serve_url}/")
    wait_for(lambda: "Voices:" in page.find_element(By.ID, "speak-message").text, "the failure to be shown")
    wait_loaded(page)  # the next status poll loads the list again
    assert page.find_element(By.ID, "speak-message").text == ""
    assert page.find_element(By.ID, "clones-message").text == ""


def test_bad_upload_shows_the_api_message(page: Any, serve_url: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"this is text pretending to be a wav file\n" * 20)
    api = httpx.post(f"{serve_url}/v1/audio/voices", files={"file": (bad.name, bad.read_bytes())}, timeout=30)
    assert api.status_code == 400
    expected = api.json()["error"]["message"]

    open_page(page, f"{serve_url}/#voices")
    page.find_element(By.ID, "upload-file").send_keys(str(bad))
    page.find_element(By.ID, "upload-name").send_keys("bad clip")
    page.find_element(By.CSS_SELECTOR, "#upload-form button[type=submit]").click()
    message = page.find_element(By.ID, "upload-message")
    wait_for(lambda: message.get_attribute("data-kind") == "error", "the error message")
    assert message.text == expected
    page.save_screenshot(str(tmp_path / "upload-error.png"))


def test_record_clone_list_and_delete(page: Any, serve_url: str) -> None:
    """A clip recorded from Chromium's fake microphone becomes a clone, is offered as a voice, and
    is deleted again (two presses)."""
    from selenium.webdriver.common.by import By

    open_page(page, f"{serve_url}/#voices")
    page.find_element(By.ID, "record-start").click()
    wait_for(lambda: page.find_element(By.ID, "record-stop").is_enabled(), "recording to start")
    time.sleep(2.0)  # the service wants at least 1 s
    page.find_element(By.ID, "record-stop").click()
    wait_for(lambda: page.find_element(By.ID, "record-upload").is_enabled(), "the recorded clip")
    page.find_element(By.ID, "record-name").send_keys("browser clip")
    page.find_element(By.ID, "record-upload").click()
    message = page.find_element(By.ID, "record-message")
    wait_for(lambda: message.get_attribute("data-kind") in ("ok", "error"), "the upload's answer")
    assert message.get_attribute("data-kind") == "ok", message.text
    row = wait_for(
        lambda: [r for r in page.find_elements(By.CSS_SELECTOR, "#clones-table tbody tr") if "browser clip" in r.text],
        "the clone in the list",
    )[0]
    voice_id = row.get_attribute("data-voice-id")
    labels = page.execute_script("return [...document.querySelectorAll('#speak-voice option')].map(o => o.textContent)")
    assert "browser clip (clone)" in labels
    button = row.find_element(By.CSS_SELECTOR, "button[data-delete-id]")
    button.click()
    assert button.text == "Confirm delete"
    button.click()
    wait_for(
        lambda: not page.find_elements(By.CSS_SELECTOR, f"#clones-table tr[data-voice-id='{voice_id}']"),
        "the clone to go",
    )
    assert httpx.get(f"{serve_url}/v1/audio/voices/{voice_id}", timeout=30).status_code == 404


def test_api_key_is_kept_for_the_tab_and_sent(page: Any, serve_url: str) -> None:
    from selenium.webdriver.common.by import By

    inject(page, AUTH_RECORDER)
    open_page(page, f"{serve_url}/")
    field = page.find_element(By.ID, "api-key")
    field.send_keys("sk-test-123\n")  # Enter submits the key form
    wait_for(lambda: page.find_element(By.ID, "key-state").text, "the key to be taken")
    page.refresh()
    open_page(page, page.current_url)
    assert page.find_element(By.ID, "api-key").get_attribute("value") == "sk-test-123"
    assert page.execute_script("return sessionStorage.length") == 1
    wait_for(
        lambda: page.execute_script("return window.__auth.some(([u, a]) => u.includes('/v1/engines'))"), "a status poll"
    )
    sent = page.execute_script("return window.__auth.filter(([u]) => u.startsWith('/v1/')).map(([u, a]) => a)")
    assert sent and set(sent) == {"Bearer sk-test-123"}
    page.find_element(By.ID, "key-forget").click()
    assert page.execute_script("return sessionStorage.length") == 0


def test_phone_layout_fits_the_screen(page: Any, serve_url: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    page.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    )
    for panel in ("speak", "voices", "status"):
        # A query string makes each a new document: a bare "#panel" after the last test's page
        # would only change the fragment, and the check would read that page's leftover state
        # (CI once timed out here waiting for the voice list).
        open_page(page, f"{serve_url}/?layout=phone-{panel}#{panel}")
        overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the {panel} panel is {overflow} px wider than a phone"
        page.save_screenshot(str(tmp_path / f"phone-{panel}.png"))
    # Keyboard: the tabs are links in the tab order, and Enter on one switches the panel.
    link = page.find_element(By.CSS_SELECTOR, "a[data-tab='voices']")
    link.send_keys("\n")
    wait_for(lambda: page.find_element(By.ID, "panel-voices").is_displayed(), "the Voices panel")
    assert link.get_attribute("aria-current") == "page"
