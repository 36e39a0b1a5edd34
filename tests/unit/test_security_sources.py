"""Static scans of the project's own Python sources, with the `ast` module.

Three rules the seed and the mission state, checked on every file so that a new module cannot
quietly break them:
- no shell anywhere near user text: no `shell=True`, `os.system`, `os.popen`,
  `asyncio.create_subprocess_shell` or the shell-backed `subprocess.getoutput` family;
- no emoji in any Python source (raw characters anywhere, and in the decoded value of string
  literals of the product packages, where an escape such as a backslash-U sequence would hide one);
- no log call that interpolates user text without `truncate()` around it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = ("serve_app", "agent", "config", "bench")
ALL_PACKAGES = (*PRODUCT_PACKAGES, "tests", "deploy", "docs")

# Emoji and pictographs, dingbats, variation selectors and the zero-width joiner (as config.logging).
EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0001f900-\U0001f9ff\U0000fe00-\U0000fe0f\U0000200d]"
)
# Names under which user text travels through the code base.
USER_TEXT_NAMES = frozenset(
    {"text", "input", "sentence", "sentences", "transcript", "utterance", "phrase", "prompt", "instructions"}
)
LOG_METHODS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "log"})
SHELL_CALLS = frozenset(
    {
        ("os", "system"),
        ("os", "popen"),
        ("asyncio", "create_subprocess_shell"),
        ("subprocess", "getoutput"),
        ("subprocess", "getstatusoutput"),
    }
)
# Calls through which user text may pass into a log line: they bound or summarise it.
SAFE_WRAPPERS = frozenset({"truncate", "len", "type", "id", "hash"})


def python_files(packages: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for package in packages:
        base = ROOT / package
        if base.is_dir():
            files.extend(p for p in sorted(base.rglob("*.py")) if "__pycache__" not in p.parts)
    return files


@cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def dotted(node: ast.AST) -> tuple[str, ...]:
    """`a.b.c` as ('a', 'b', 'c'); empty when the expression is not a plain dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return tuple(reversed(parts))
    return ()


def calls(path: Path) -> Iterator[ast.Call]:
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Call):
            yield node


def test_the_scans_see_the_project() -> None:
    """Guards the scans themselves: an empty file list would make every check pass vacuously."""
    files = python_files(PRODUCT_PACKAGES)
    names = {p.relative_to(ROOT).as_posix() for p in files}
    assert {"serve_app/router/core.py", "serve_app/engines/flite.py", "config/logging.py", "agent/tts.py"} <= names


def test_no_shell_anywhere_in_the_product() -> None:
    found: list[str] = []
    for path in python_files(PRODUCT_PACKAGES):
        for call in calls(path):
            name = dotted(call.func)
            if name[-2:] in SHELL_CALLS or (len(name) == 1 and name[0] in {"system", "popen"}):
                found.append(f"{where(path, call)} {'.'.join(name)}()")
            for keyword in call.keywords:
                # shell=<anything but a literal False> may run a shell.
                is_false = isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                if keyword.arg == "shell" and not is_false:
                    found.append(f"{where(path, call)} {'.'.join(name) or 'call'}(shell=...)")
    assert not found, "shell execution found:\n" + "\n".join(found)


def test_subprocesses_take_argument_lists() -> None:
    """Every subprocess spawn passes an argv list, never one command string a shell would split."""
    spawners = {("subprocess", n) for n in ("run", "Popen", "call", "check_call", "check_output")}
    spawners.add(("asyncio", "create_subprocess_exec"))
    found: list[str] = []
    for path in python_files(PRODUCT_PACKAGES):
        for call in calls(path):
            if dotted(call.func)[-2:] in spawners and call.args:
                first = call.args[0]
                if isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp):
                    found.append(f"{where(path, call)} passes a command string")
    assert not found, "\n".join(found)


def test_no_emoji_characters_in_any_python_source() -> None:
    found: list[str] = []
    for path in python_files(ALL_PACKAGES):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if EMOJI.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}")
    assert not found, "emoji in sources:\n" + "\n".join(found)


def test_no_emoji_in_string_literals_of_the_product() -> None:
    """Decoded values too: an escape sequence spelling an emoji is still an emoji in a log line.

    The sanitizer's own pattern (a regex character class of emoji ranges) is the one exception.
    """
    found: list[str] = []
    for path in python_files(PRODUCT_PACKAGES):
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and EMOJI.search(node.value):
                if node.value.startswith("[") and node.value.endswith("]"):
                    continue  # a character class: config.logging._EMOJI
                found.append(where(path, node))
    assert not found, "emoji in string literals:\n" + "\n".join(found)


def _is_log_call(call: ast.Call) -> bool:
    name = dotted(call.func)
    return len(name) >= 2 and name[-1] in LOG_METHODS and "log" in name[-2].lower()


def _unwrapped_user_text(node: ast.AST) -> list[str]:
    """User-text names used in `node` outside a bounding call such as truncate(...) or len(...)."""
    if isinstance(node, ast.Call):
        name = dotted(node.func)
        if name and name[-1] in SAFE_WRAPPERS:
            return []
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice) and node.slice.upper is not None:
        return []  # text[:80] is bounded
    hits: list[str] = []
    if isinstance(node, ast.Name) and node.id in USER_TEXT_NAMES:
        hits.append(node.id)
    elif isinstance(node, ast.Attribute) and node.attr in USER_TEXT_NAMES:
        hits.append(".".join(dotted(node)) or node.attr)
        return hits
    for child in ast.iter_child_nodes(node):
        hits.extend(_unwrapped_user_text(child))
    return hits


def test_log_calls_never_interpolate_user_text_without_truncate() -> None:
    found: list[str] = []
    for path in python_files(PRODUCT_PACKAGES):
        for call in calls(path):
            if not _is_log_call(call):
                continue
            for argument in [*call.args, *(k.value for k in call.keywords)]:
                for name in _unwrapped_user_text(argument):
                    found.append(f"{where(path, call)} logs {name} without truncate()")
    assert not found, "\n".join(found)


def test_the_log_scan_catches_what_it_should() -> None:
    """The rule on a sample: bare text and f-strings are caught; truncate(), len() and slices pass."""
    sample = ast.parse(
        "logger.info('a %s', text)\n"
        "logger.debug(f'b {request.text}')\n"
        "log.warning('c %s %d', truncate(text), len(sentence))\n"
        "self._log.info('d %s', body.input[:40])\n"
        "print(text)\n"
    )
    verdicts = [
        bool(_is_log_call(node) and any(_unwrapped_user_text(a) for a in node.args))
        for node in ast.walk(sample)
        if isinstance(node, ast.Call) and dotted(node.func)[-1:] != ("truncate",)
        and dotted(node.func)[-1:] != ("len",)
    ]
    assert verdicts == [True, True, False, False, False]
