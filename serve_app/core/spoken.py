"""Spoken-form text: numbers, money, dates, times, ordinals, phones, URLs, e-mails, abbreviations as words.

`to_spoken("It costs $3.50 at 3:30 pm.")` returns "It costs three dollars fifty cents at three thirty PM."
That text is what the engine speaks and what the word timestamps carry, so a caller sees "twenty
three" for "23". Call it once per sentence, after `split_sentences`: only the first sentence's
normalisation then adds to time to first byte; the others are done while earlier ones play.

Why NVIDIA NeMo text processing (`nemo_text_processing`, weighted finite-state grammars on pynini):
it is maintained, Apache-2.0, and covers every class the issue names with one grammar. Measured on
this project's 2-core machine it is also the correct one: WeTextProcessing's precompiled runtime
(`wetext`) says "$3.50" as "three point five dollars", drops the "one" of "$1,249.99", reads
"1990s" as "... ninety seconds" and fails outright on "#1" and on double spaces.

How it is configured, and why:
- English, deterministic, `input_case="cased"`: one reading per input, and case is kept, so names
  and acronyms reach the engine as written. `punct_post_process=True` puts the input's punctuation
  spacing back (NeMo's recommended setting for TTS).
- The grammars are compiled once into `.far` files in a directory named after the NeMo and pynini
  versions (a library upgrade never loads stale grammars). Compiling takes about 20-30 s of CPU
  (30-50 s wall on a busy 2-core machine); loading the cache about 0.5 s including the import.
- NeMo's three grammar passes (tagger, verbaliser, post-processor) run in a small C walker
  (`spoken_walk`, `tagger_runtime`), not in pynini's general composition: the same grammars and
  weights, the same output on every corpus sentence, about 10x less time a sentence (the tagger's
  markup arcs open every semiotic class at each token start; the walker only enters a grammar state
  that can read the next character). The build step exports the grammars for it and compiles it;
  without a C compiler, or with an older cache, NeMo composes with pynini as before, and
  `status()["walker"]` says which and why.
- The serving process never compiles. Compiling holds the GIL for tens of seconds, which would stall
  every stream of the replica, so a missing cache is built by a child process
  (`python -m serve_app.core.spoken --build-cache`, also what the install step runs), under a file
  lock and renamed into place atomically, so replicas sharing the directory build it once and never
  read a half-written file. Loading runs in a background thread: replicas start at once and text
  passes through unchanged until the normaliser is ready (the engines still read digits their own
  way), which with a prebuilt cache is under a second after start.
- Most agent sentences have nothing to normalise. A pre-check built from NeMo's own data (its
  abbreviation whitelist and state list, plus any digit or symbol) finds the tokens that could
  change; a sentence without one costs microseconds. Only windows of two plain words around those
  tokens go through the grammars: NeMo's cost grows with length (its Python parser and
  permutations too, not only the grammars), and no grammar spans two plain words on each side of a
  cut, so the result is that of the whole sentence. `bench.normalize --corpus` checks it: of 9,000
  sentences of package docs, 4,065 were skipped (NeMo would have changed one, for the worse:
  "'c' is" -> "C 'is") and 9 of the 4,935 windowed ones differ from the whole-sentence result, in
  version strings like "2.8.0", code, or an "and" inside a number. Long windows are cut at
  `max_window_tokens` and each call has a time budget, bounding how long one pathological input can
  hold the GIL.
- Where the time goes (profiled on the bench's number-dense sentences, 1.3-1.6 ms each): the
  walker about 30%, NeMo's token parser and permutations most of the rest; pynini composing the
  same grammars took 17-22 ms for them. `bench.normalize` has the figures per category.
- The first call after loading pays about 10 ms more (lazy set-up inside pynini and NeMo), so loading
  ends by normalising one sentence that touches every class: the first request does not pay it.
- Window results are memoised (NeMo is deterministic, so a window always gives the same words): an
  agent repeating a phone number, a price or "at 9 am" within a conversation pays once.
- NeMo keeps per-call parser state, so one lock serialises calls. The walker runs without the GIL
  (ctypes drops it), so the replica's event loop keeps going meanwhile; pynini holds it.
- NeMo logs whole input texts; its records are truncated with `config.logging.truncate` and its own
  stderr handler is removed, so they go through the application's sanitising handlers.
- Anything going wrong returns the input unchanged: normalisation improves speech, it must never
  lose it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from config.logging import truncate
from serve_app.core import spoken_walk

logger = logging.getLogger(__name__)

# Same variable name the settings field should use (TTS_NORMALIZE_CACHE_DIR); data/ is git-ignored.
CACHE_DIR_ENV = "TTS_NORMALIZE_CACHE_DIR"
DEFAULT_CACHE_DIR = "./data/tn-cache"
SUPPORTED_LANGUAGES = frozenset({"en"})

_NEMO_LOGGER = "NeMo-text-processing"
_INPUT_CASE = "cased"
# What a cache directory holds besides NeMo's `.far` files; "w1": the grammars exported for the walker.
_LAYOUT = "w1"
# Punctuation NeMo leaves as it is between plain words (checked on a corpus); anything else that is
# not a letter or a space (digits, $ % & @ # / + = ° ...) may be read out, so it makes a token a candidate.
_SAFE_PUNCT = frozenset(",.!?;:'\"()[]{}-\u2018\u2019\u201c\u201d\u2026\u2014\u2013\u00ab\u00bb")
_WRAPPING_PUNCT = "\"'()[]{}\u2018\u2019\u201c\u201d\u00ab\u00bb"
_TRAILING = ",;:!?\u2026"
_DOT_WORD = re.compile(r"\.\w")  # "example.com", "e.g", ".aiff": read as "dot ..."
_INITIAL = re.compile(r"[A-Z]\.")
_TOKEN = re.compile(r"\S+")
# NeMo's deterministic English whitelist turns "St"/"ST"/"st" before a name into "Saint".
_SAINT = frozenset({"st", "St", "ST"})
# Normalised once after loading: one sentence that goes through every class the service cares about.
_WARM_UP_TEXT = (
    "Dr. Smith paid $1,249.99 (15% off) on March 21, 2024 at 3:30 pm for the 2nd of 4 items of 2.5 kg;"
    " call 555-123-4567 or write to jo@example.com, see www.example.com/help."
)


class State(StrEnum):
    IDLE = "idle"
    BUILDING = "building"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class _Backend(Protocol):
    def normalize(
        self, text: str, verbose: bool = ..., punct_pre_process: bool = ..., punct_post_process: bool = ...
    ) -> str: ...


@dataclass(frozen=True)
class _Triggers:
    """Tokens of NeMo's English data that its grammars rewrite although they hold no digit or symbol."""

    exact: frozenset[str]
    lower: frozenset[str]
    states: frozenset[str]


def default_cache_dir() -> Path:
    """Where compiled grammars live unless a caller passes one: $TTS_NORMALIZE_CACHE_DIR or ./data/tn-cache."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


def cache_subdir(cache_dir: str | Path, language: str = "en") -> Path:
    """The versioned directory holding one language's `.far` files: a library upgrade gets a new one."""
    name = f"nemo-{_version('nemo_text_processing')}-pynini-{_version('pynini')}-{language}-{_INPUT_CASE}-{_LAYOUT}"
    return Path(cache_dir) / name


def language_key(language: str | None) -> str | None:
    """`en-US`, `en_gb`, `English` and None (the service default) -> "en"; other tags -> their primary subtag."""
    if language is None:
        return "en"
    if not isinstance(language, str):
        return None
    key = re.split(r"[-_\s]", language.strip().lower(), maxsplit=1)[0]
    if key == "english":
        return "en"
    return key or "en"


def build_cache(cache_dir: str | Path | None = None, language: str = "en") -> Path:
    """Compile the grammars into `cache_dir` unless already there; returns the versioned directory.

    Runs in the calling process (use it from the install step or a child process, not a replica).
    Safe to run concurrently: a file lock makes later callers wait, then find the finished directory;
    the build happens in a temporary directory renamed into place, so readers never see half of it.
    """
    if language != "en":
        raise ValueError(f"no grammars for language {language!r}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache_subdir(root, language)
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            started = time.perf_counter()
            backend = _new_backend(tmp)
            fars = sorted(p.name for p in tmp.glob("*.far"))
            if len(fars) < 3:
                raise RuntimeError(f"grammar build left {len(fars)} .far files in {tmp}")
            info = {
                "seconds": round(time.perf_counter() - started, 1),
                "nemo_text_processing": _version("nemo_text_processing"),
                "pynini": _version("pynini"),
                "files": fars,
                "walker": spoken_walk.export(backend, tmp),
            }
            (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")
            tmp.chmod(0o755)  # mkdtemp makes it private; replicas may run as another user
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _new_backend(cache_dir: Path) -> _Backend:
    """NeMo's English normaliser over `cache_dir` (compiles whatever `.far` is missing there)."""
    _quiet_nemo_logger()
    from nemo_text_processing.text_normalization.normalize import Normalizer

    backend: _Backend = Normalizer(
        input_case=_INPUT_CASE,
        lang="en",
        deterministic=True,
        cache_dir=str(cache_dir),
        overwrite_cache=False,
        post_process=True,
    )
    return backend


class _TruncatingFilter(logging.Filter):
    """NeMo logs whole input texts (at INFO for every '$' or '%' it meets); keep them short and quiet."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg = truncate(message)
        record.args = None
        if record.levelno < logging.WARNING:
            # NeMo resets its logger to INFO on every call; its chatter shows only when ours is at DEBUG.
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logger.isEnabledFor(logging.DEBUG)
        return True


_quiet_lock = threading.Lock()
_quieted = False


def _quiet_nemo_logger() -> None:
    """Remove NeMo's own stderr handler and truncate its records; idempotent."""
    global _quieted
    with _quiet_lock:
        if _quieted:
            return
        nemo_logger = logging.getLogger(_NEMO_LOGGER)
        # Importing the module that creates the handler first, so removing it sticks.
        with contextlib.suppress(Exception):
            import nemo_text_processing.utils.logging  # noqa: F401
        for handler in list(nemo_logger.handlers):
            nemo_logger.removeHandler(handler)
        nemo_logger.addFilter(_TruncatingFilter())
        nemo_logger.propagate = True
        _quieted = True


def _load_triggers() -> _Triggers:
    """Read NeMo's English whitelist and state abbreviations from the installed package's data files."""
    from nemo_text_processing.text_normalization.en.utils import get_abs_path, load_labels

    exact: set[str] = set()
    lower: set[str] = set()
    for name in ("data/whitelist/tts.tsv", "data/whitelist/symbol.tsv"):
        for row in load_labels(get_abs_path(name)):
            if not row or not row[0].strip():
                continue
            first = row[0].split()[0]  # multi-word entries ("World War II") start with a trigger
            exact.add(first)
            core = first.rstrip(".")
            # Without the dot and case-insensitively too, except one-letter keys: "a. d." and "I." must
            # not make every "a" and "I" a candidate.
            if sum(ch.isalnum() for ch in core) > 1:
                exact.add(core)
                lower.add(core.lower())
    states = {row[1] for row in load_labels(get_abs_path("data/address/state.tsv")) if len(row) > 1}
    return _Triggers(frozenset(exact), frozenset(lower), frozenset(states))


class SpokenNormalizer:
    """One language's process-wide normaliser: loads in the background, passes text through until ready.

    Thread-safe. `normalize()` never raises and never blocks on loading; `load()` is the blocking form
    for tests and tools; `start()` begins loading in a daemon thread (idempotent).
    """

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        *,
        language: str = "en",
        build_if_missing: bool = True,
        margin_tokens: int = 2,
        max_window_tokens: int = 16,
        budget_s: float = 1.0,
        memo_size: int = 1024,
        build_timeout_s: float = 900.0,
        retry_after_s: float = 300.0,
        walker: bool = True,
    ) -> None:
        if language not in SUPPORTED_LANGUAGES:
            raise ValueError(f"no normaliser for language {language!r}")
        self.language = language
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.build_if_missing = build_if_missing
        self.margin_tokens = max(2, margin_tokens)
        self.max_window_tokens = max(2 * self.margin_tokens + 1, max_window_tokens)
        self.budget_s = budget_s
        self.memo_size = max(0, memo_size)
        self._memo: OrderedDict[str, str] = OrderedDict()
        self.build_timeout_s = build_timeout_s
        self.retry_after_s = retry_after_s
        self._state = State.IDLE
        self._error: str | None = None
        self._backend: _Backend | None = None
        self._triggers: _Triggers | None = None
        self._state_lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._ready_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_at = 0.0
        self._warned_not_ready = False
        self.load_seconds: float | None = None
        self.walker = walker
        # "on", or why NeMo composes with pynini instead (off by choice, no compiler, old cache ...).
        self.walker_status = "not loaded"

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is State.READY

    def status(self) -> dict[str, Any]:
        """For health and engine listings: state, the last error (short), where the cache is."""
        return {
            "language": self.language,
            "state": self._state.value,
            "error": self._error,
            "cache_dir": str(cache_subdir(self.cache_dir, self.language)),
            "load_s": self.load_seconds,
            "walker": self.walker_status,
        }

    def start(self) -> None:
        """Load (building the cache in a child process if missing) in a daemon thread; idempotent."""
        with self._state_lock:
            if self._state in (State.BUILDING, State.LOADING, State.READY):
                return
            if self._state is State.FAILED and time.monotonic() - self._failed_at < self.retry_after_s:
                return
            self._state = State.LOADING
            self._thread = threading.Thread(target=self._load_quietly, name="spoken-normalizer", daemon=True)
            self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until ready (True) or the timeout passes or loading failed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ready_event.wait(0.05):
                return True
            if self._state is State.FAILED:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def load(self) -> None:
        """Blocking load in the calling thread; raises on failure (tests and tools use this)."""
        with self._state_lock:
            if self._state is State.READY:
                return
            loader = self._thread if self._thread is not None and self._thread.is_alive() else None
            if loader is None:
                self._state = State.LOADING
        if loader is not None:  # a background load is under way: wait for it rather than load twice
            loader.join()
            if self._state is not State.READY:
                raise RuntimeError(self._error or "spoken-form normaliser failed to load")
            return
        self._load()

    def _load_quietly(self) -> None:
        try:
            self._load()
        except Exception as exc:  # logged; text keeps passing through
            logger.warning(
                "spoken-form normaliser unavailable (%s); text passes through unchanged",
                truncate(f"{type(exc).__name__}: {exc}"),
            )

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            final = cache_subdir(self.cache_dir, self.language)
            if not final.is_dir():
                if not self.build_if_missing:
                    raise FileNotFoundError(f"no compiled grammars at {final}")
                self._state = State.BUILDING
                logger.info("compiling text-normalisation grammars into %s (child process)", final)
                self._build_in_child()
                if not final.is_dir():
                    raise RuntimeError(f"grammar build did not produce {final}")
            self._state = State.LOADING
            triggers = _load_triggers()
            backend = _new_backend(final)
            self._attach_walkers(backend, final)
            _warm(backend)
        except Exception as exc:
            with self._state_lock:
                self._state = State.FAILED
                self._error = truncate(f"{type(exc).__name__}: {exc}")
                self._failed_at = time.monotonic()
            raise
        with self._state_lock:
            self._triggers, self._backend = triggers, backend
            self._error = None
            self.load_seconds = round(time.perf_counter() - started, 3)
            self._state = State.READY
        self._ready_event.set()
        logger.info("spoken-form normaliser (%s) ready in %.2f s", self.language, self.load_seconds)

    def _attach_walkers(self, backend: _Backend, directory: Path) -> None:
        """Run NeMo's grammar passes in the C walker (about 10x faster a sentence); pynini's
        composition if it cannot. The backend's methods hold the walkers from then on."""
        if not self.walker:
            self.walker_status = "off"
            return
        try:
            walkers = spoken_walk.load(directory)
        except Exception as exc:
            self.walker_status = truncate(f"off: {type(exc).__name__}: {exc}", 200)
            logger.warning("spoken-form grammars run through pynini, about 10x slower (%s)", self.walker_status)
            return
        spoken_walk.attach(backend, walkers)
        self.walker_status = "on"

    def _build_in_child(self) -> None:
        """Compile in a child process: pynini holds the GIL while compiling, which would stall the replica."""
        cmd = [
            sys.executable,
            "-m",
            "serve_app.core.spoken",
            "--build-cache",
            "--cache-dir",
            str(self.cache_dir),
            "--language",
            self.language,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.build_timeout_s, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"grammar build exited {proc.returncode}: {truncate(tail[0], 200)}")

    # --- normalising --------------------------------------------------------------------------

    def needs_normalization(self, text: str) -> bool:
        """True when some token could be rewritten (cheap; False means NeMo would return the text as is)."""
        if self._triggers is None:
            return False
        tokens = _TOKEN.findall(text)
        return any(self._is_candidate(tokens, i) for i in range(len(tokens)))

    def normalize(self, text: str, known: Mapping[str, str] | None = None) -> str:
        """The spoken form of `text`; the input unchanged when not ready, on failure, or for odd input.

        `known` maps windows to their spoken form computed earlier (`stable_windows` and
        `normalize_window`, while the sentence was still arriving): those cost nothing now, and the
        result is the same as without them, since a window is always normalised on its own.
        """
        try:
            if not isinstance(text, str) or not text.strip():
                return text
            if self._state is not State.READY:
                self._pass_through_not_ready()
                return text
            return self._normalize(text, known or {})
        except Exception as exc:
            logger.warning(
                "spoken-form normalisation failed (%s) for %r; text kept as is",
                type(exc).__name__,
                truncate(text if isinstance(text, str) else repr(text)),
            )
            return text

    def _pass_through_not_ready(self) -> None:
        self.start()
        if not self._warned_not_ready:
            self._warned_not_ready = True
            logger.info("spoken-form normaliser %s; text passes through unchanged until it is ready", self._state.value)

    def stable_windows(self, prefix: str) -> list[str]:
        """The windows of `prefix` (the start of a sentence still arriving) that no later text can change.

        Whatever follows, the whole sentence's windows include these, character for character. Why:
        the last token of `prefix` may still grow (unless whitespace follows it), and a token that
        is not there yet may be a candidate, which covers the `margin_tokens` before it; coverage only
        ever grows with more text. So a window is final once the token after it stays uncovered: it
        ends at least `margin_tokens + 1` tokens before the last complete one ("on May 5" waits: a
        "th" may follow). A bracket still open may be closed later and widen every window after
        it to the whole pair, so windows after an open bracket wait too. Long runs cut at
        `max_window_tokens` are cut from their start, so their early pieces are final as well.
        Empty while the normaliser is not ready.
        """
        return self._window_texts(prefix, complete=False)

    def windows(self, text: str) -> list[str]:
        """The windows `normalize(text)` sends through NeMo, in order (empty while not ready)."""
        return self._window_texts(text, complete=True)

    def _window_texts(self, text: str, *, complete: bool) -> list[str]:
        if self._triggers is None or not isinstance(text, str):
            return []
        matches = list(_TOKEN.finditer(text))
        if not complete and matches and matches[-1].end() == len(text):
            matches.pop()  # the last token may still grow
        tokens = [m.group() for m in matches]
        flags = [self._is_candidate(tokens, i) for i in range(len(tokens))]
        if not any(flags):
            return []
        limit = len(tokens)
        if not complete:
            limit = min(len(tokens) - self.margin_tokens - 1, _first_open_bracket(tokens) - 1)
        return [
            text[matches[first].start() : matches[last].end()]
            for first, last in self._windows(tokens, flags)
            if last < limit
        ]

    def normalize_window(self, window: str) -> str:
        """The spoken form of one window of `stable_windows` (memoised; the window on failure)."""
        return self._normalize_window(window)

    def _normalize(self, text: str, known: Mapping[str, str]) -> str:
        matches = list(_TOKEN.finditer(text))
        tokens = [m.group() for m in matches]
        flags = [self._is_candidate(tokens, i) for i in range(len(tokens))]
        if not any(flags):
            return text
        deadline = time.perf_counter() + self.budget_s
        out: list[str] = []
        cursor = 0
        for first, last in self._windows(tokens, flags):
            start, end = matches[first].start(), matches[last].end()
            out.append(text[cursor:start])
            window = text[start:end]
            spoken = known.get(window)
            if spoken is not None:
                out.append(spoken)
                cursor = end
                continue
            if time.perf_counter() > deadline:
                logger.warning(
                    "spoken-form normalisation over its %.1f s budget; rest of %r kept as is",
                    self.budget_s,
                    truncate(text),
                )
                out.append(text[start:])
                return "".join(out)
            out.append(self._normalize_window(window))
            cursor = end
        out.append(text[cursor:])
        return "".join(out)

    def _normalize_window(self, window: str) -> str:
        backend = self._backend
        if backend is None:
            return window
        try:
            with self._call_lock:
                spoken = self._memo.get(window)
                if spoken is not None:
                    self._memo.move_to_end(window)
                    return spoken
                spoken = backend.normalize(window, punct_post_process=True)
                if self.memo_size and isinstance(spoken, str) and spoken.strip():
                    self._memo[window] = spoken
                    if len(self._memo) > self.memo_size:
                        self._memo.popitem(last=False)
        except Exception as exc:
            logger.warning(
                "spoken-form normalisation failed (%s) for %r; kept as is", type(exc).__name__, truncate(window)
            )
            return window
        if not isinstance(spoken, str) or not spoken.strip():
            return window
        return spoken

    def _windows(self, tokens: list[str], flags: list[bool]) -> list[tuple[int, int]]:
        """Runs of tokens within `margin_tokens` of a candidate, each at most `max_window_tokens` long."""
        n, margin = len(tokens), self.margin_tokens
        covered = [False] * n
        for i, flag in enumerate(flags):
            if flag:
                for j in range(max(0, i - margin), min(n, i + margin + 1)):
                    covered[j] = True
        _cover_bracket_pairs(tokens, covered)
        runs: list[tuple[int, int]] = []
        i = 0
        while i < n:
            if not covered[i]:
                i += 1
                continue
            j = i
            while j + 1 < n and covered[j + 1]:
                j += 1
            runs.extend(self._cut(tokens, i, j))
            i = j + 1
        return runs

    def _cut(self, tokens: list[str], first: int, last: int) -> list[tuple[int, int]]:
        """Split a long run, preferring to cut after a clause end, to bound the cost of one call."""
        limit = self.max_window_tokens
        pieces: list[tuple[int, int]] = []
        while last - first + 1 > limit:
            cut = first + limit - 1
            for k in range(first + limit - 1, first + limit // 2 - 1, -1):
                if tokens[k][-1:] in ",;:.!?":
                    cut = k
                    break
            pieces.append((first, cut))
            first = cut + 1
        pieces.append((first, last))
        return pieces

    def _is_candidate(self, tokens: list[str], i: int) -> bool:
        """Could NeMo rewrite this token? Digits and symbols, or an entry of its English data."""
        triggers = self._triggers
        if triggers is None:
            return False
        token = tokens[i]
        for ch in token:
            if not (ch.isalpha() or ch in _SAFE_PUNCT or unicodedata.category(ch).startswith("M")):
                return True
        core = token.strip(_WRAPPING_PUNCT + _TRAILING)  # "(Dr.)," -> "Dr."
        bare = core.strip(_WRAPPING_PUNCT + _TRAILING + ".")  # "etc.)." -> "etc"
        if not bare:
            return False
        if _DOT_WORD.search(core) or _INITIAL.fullmatch(core):
            return True
        if core in triggers.exact or bare in triggers.exact or bare.lower() in triggers.lower:
            return True
        if bare in _SAINT:
            return True
        # "Austin, TX": NeMo expands a state abbreviation only after a comma.
        return bare in triggers.states and i > 0 and tokens[i - 1].endswith(",")


def _warm(backend: _Backend) -> None:
    """Pay the first call's set-up cost while loading, not on the first request; failures only logged."""
    try:
        backend.normalize(_WARM_UP_TEXT, punct_post_process=True)
    except Exception as exc:
        logger.debug("spoken-form warm-up failed (%s)", type(exc).__name__)


_OPENERS = {")": "(", "]": "[", "}": "{"}


def _bracket_pairs(tokens: list[str]) -> tuple[list[tuple[int, int]], list[int]]:
    """(token index pairs of matched brackets, indexes of the tokens whose bracket is still open);
    a closer without its opener is ignored, one with it closes any unmatched opener in between."""
    stack: list[tuple[str, int]] = []
    pairs: list[tuple[int, int]] = []
    for i, token in enumerate(tokens):
        for ch in token:
            if ch in "([{":
                stack.append((ch, i))
            elif ch in _OPENERS:
                while stack and stack[-1][0] != _OPENERS[ch]:
                    stack.pop()
                if stack:
                    pairs.append((stack.pop()[1], i))
    return pairs, [i for _, i in stack]


def _first_open_bracket(tokens: list[str]) -> int:
    """Index of the first token whose opening bracket is still unclosed (len(tokens) if none)."""
    unclosed = _bracket_pairs(tokens)[1]
    return unclosed[0] if unclosed else len(tokens)


def _cover_bracket_pairs(tokens: list[str], covered: list[bool]) -> None:
    """Widen windows to whole bracket pairs: NeMo reads "text](https://..." differently without its "["."""
    pairs = _bracket_pairs(tokens)[0]
    changed, rounds = True, 0
    while changed and rounds < 8:  # widening one pair can half-cover an enclosing one; nesting is shallow
        changed, rounds = False, rounds + 1
        for first, last in pairs:
            if first != last and any(covered[first : last + 1]) and not all(covered[first : last + 1]):
                for j in range(first, last + 1):
                    covered[j] = True
                changed = True


# --- process-wide access ------------------------------------------------------------------------

_registry_lock = threading.Lock()
_normalizers: dict[str, SpokenNormalizer] = {}
_cache_dir: Path | None = None


def configure(cache_dir: str | Path | None) -> None:
    """Set where grammars are cached (from settings) before the first use; later calls keep loaded ones."""
    global _cache_dir
    with _registry_lock:
        _cache_dir = Path(cache_dir) if cache_dir is not None else None


def get_normalizer(language: str | None = None) -> SpokenNormalizer | None:
    """The process-wide normaliser for `language`, created on first use; None where there is none."""
    key = language_key(language)
    if key not in SUPPORTED_LANGUAGES:
        return None
    with _registry_lock:
        normalizer = _normalizers.get(key)
        if normalizer is None:
            normalizer = SpokenNormalizer(_cache_dir, language=key)
            _normalizers[key] = normalizer
    return normalizer


def warm_up(language: str | None = None) -> SpokenNormalizer | None:
    """Start loading in the background (call at replica start so the first request finds it ready)."""
    normalizer = get_normalizer(language)
    if normalizer is not None:
        normalizer.start()
    return normalizer


def _usable_normalizer(language: str | None) -> SpokenNormalizer | None:
    """The normaliser `to_spoken` would use, or None where the text passes through as it is (no
    normaliser for the language, or one that could not be created)."""
    try:
        return get_normalizer(language)
    except Exception:
        return None


def unchanged_spoken(text: str, language: str | None = None) -> bool:
    """True when `to_spoken(text, language)` would return `text` as it is, known without running the
    grammars: no normaliser for the language, or a ready one that finds no token to rewrite (most
    sentences of a conversation). It is a scan of the text, cheap enough for an event loop, so such
    sentences need no hop to a worker thread; False means `to_spoken` must run (off the loop)."""
    normalizer = _usable_normalizer(language)
    return normalizer is None or (normalizer.ready and not normalizer.needs_normalization(text))


def to_spoken(text: str, language: str | None = None) -> str:
    """`text` with numbers, dates, symbols ... written out as words; unchanged for other languages.

    Never raises: on any failure, or while the normaliser is still loading, the input comes back.
    """
    normalizer = _usable_normalizer(language)
    return text if normalizer is None else normalizer.normalize(text)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the spoken-form grammars once (install step).")
    parser.add_argument("--build-cache", action="store_true", help="compile into the cache directory")
    parser.add_argument("--cache-dir", default=None, help=f"default: ${CACHE_DIR_ENV} or {DEFAULT_CACHE_DIR}")
    parser.add_argument("--language", default="en")
    args = parser.parse_args(argv)
    if not args.build_cache:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    root = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    final = cache_subdir(root, args.language)
    if final.is_dir():
        print(f"spoken-form grammars already compiled in {final}")
        return 0
    started = time.perf_counter()
    build_cache(root, args.language)  # waits instead when another process is already compiling
    print(f"spoken-form grammars ready in {final} after {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
