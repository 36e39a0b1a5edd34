"""The C grammar walker gives what pynini's composition and shortest path give, on real pynini FSTs.

Each grammar here is built with pynini the way NeMo builds its own: unions of classes with weights,
markup inserted without reading input (the arcs the walker's lookahead exists for), negative
weights, rewrites in context. The walker must agree with `shortestpath(text @ fst)` on every text,
say NO_PATH where the lattice is empty, and give up (None, so the caller composes with pynini)
rather than run past its state budget.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pynini = pytest.importorskip("pynini")

from serve_app.core.tagger_runtime import NO_PATH, FstRuntime, build_library, export_fst  # noqa: E402

SIGMA_CHARS = "abc 0123456789$.,-"


def _sigma() -> object:
    return pynini.union(*(pynini.escape(c) for c in SIGMA_CHARS)).optimize()


def _weighted(fst: object, weight: float) -> object:
    return fst + pynini.accep("", weight=weight)


def _grammar() -> object:
    """A toy tokenizer-classifier: numbers, money and words, each wrapped in inserted markup."""
    digit = pynini.union(*"0123456789")
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    digit_name = pynini.string_map([(str(value), name) for value, name in enumerate(names)])
    number = digit_name + pynini.closure(pynini.cross("", " ") + digit_name)
    cardinal = pynini.cross("", 'cardinal { integer: "') + number + pynini.cross("", '" }')
    money = (
        pynini.cross("$", 'money { currency: "dollar" amount: "')
        + number
        + pynini.closure(pynini.cross(".", " point ") + number, 0, 1)
        + pynini.cross("", '" }')
    )
    letters = pynini.union(*"abc")
    word = pynini.cross("", 'name: "') + pynini.closure(letters | digit | pynini.accep("-"), 1) + pynini.cross("", '"')
    # Words win only where nothing else reads the token: the classes cost less, one of them negative.
    token = pynini.union(_weighted(cardinal, 1.1), _weighted(money, -0.5), _weighted(word, 100.0))
    token = pynini.cross("", "tokens { ") + token + pynini.cross("", " }")
    punct = pynini.cross("", 'tokens { name: "') + pynini.union(".", ",") + pynini.cross("", '" }')
    item = token + pynini.closure(pynini.cross("", " ") + punct, 0, 1)
    return (item + pynini.closure(pynini.cross(" ", " ") + item)).optimize()


def _pynini_best(text: str, fst: object) -> object:
    lattice = pynini.escape(text) @ fst
    if lattice.num_states() == 0:
        return NO_PATH
    return pynini.shortestpath(lattice, nshortest=1, unique=True).string()


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_library(tmp_path_factory.mktemp("walker"))
    except RuntimeError as exc:  # pragma: no cover - CI installs a compiler
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def toy(library: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, FstRuntime]]:
    fst = _grammar()
    path = tmp_path_factory.mktemp("toy") / "toy.ntg"
    export_fst(fst, path)
    runtime = FstRuntime(library, path)
    yield fst, runtime
    runtime.close()


@pytest.mark.parametrize(
    "text",
    ["abc", "42", "$3.50", "cab 7 bca", "$12.05, a1 9.", "0 1 2 3", "b-c 99 $1", "a.", "$", ""],
)
def test_walker_agrees_with_pynini(toy: tuple[object, FstRuntime], text: str) -> None:
    fst, runtime = toy
    assert runtime.best_output(text) == _pynini_best(text, fst)


def test_walker_agrees_with_pynini_on_random_texts(toy: tuple[object, FstRuntime]) -> None:
    fst, runtime = toy
    rng = random.Random(13)
    accepted = 0
    for _ in range(400):
        text = "".join(rng.choice(SIGMA_CHARS) for _ in range(rng.randint(1, 14)))
        expected = _pynini_best(text, fst)
        accepted += expected is not NO_PATH
        assert runtime.best_output(text) == expected, text
    assert accepted > 50  # the sample exercises real paths, not only rejections


def test_no_path_and_a_bounded_walk(library: Path, tmp_path: Path) -> None:
    fst = _grammar()
    path = tmp_path / "g.ntg"
    export_fst(fst, path)
    tight = FstRuntime(library, path, max_states=3)
    try:
        assert tight.best_output("123 456 789") is None  # over budget: the caller composes instead
    finally:
        tight.close()
    runtime = FstRuntime(library, path)
    try:
        assert runtime.best_output("a  b") is NO_PATH  # two spaces: the grammar has no path
        assert runtime.best_output("ab\0c") is None  # not a C string: never sent to the walker
    finally:
        runtime.close()
    assert runtime.best_output("abc") is None  # closed


def test_output_much_longer_than_the_text(library: Path, tmp_path: Path) -> None:
    """The output buffer starts at 16 bytes per input byte and grows when a path writes more."""
    long = "x" * 5000
    fst = pynini.cross("a", long).optimize()
    path = tmp_path / "long.ntg"
    export_fst(fst, path)
    runtime = FstRuntime(library, path)
    try:
        assert runtime.best_output("a") == long
    finally:
        runtime.close()


def test_rewrite_in_context_like_nemo_post_processing(library: Path, tmp_path: Path) -> None:
    sigma = pynini.closure(_sigma())
    rule = pynini.cdrewrite(pynini.cross("-", " dash "), "", "", sigma).optimize()
    path = tmp_path / "rule.ntg"
    export_fst(rule, path)
    runtime = FstRuntime(library, path)
    try:
        for text in ("a-b", "--", "no dash here", "1-2-3"):
            assert runtime.best_output(text) == _pynini_best(text, rule)
    finally:
        runtime.close()


def test_concurrent_calls_agree(toy: tuple[object, FstRuntime]) -> None:
    fst, runtime = toy
    texts = ["$1.25 abc", "98 76, 5", "cab", "$0.99, 1 2 3"]
    expected = {text: _pynini_best(text, fst) for text in texts}
    failures: list[str] = []

    def worker() -> None:
        for _ in range(200):
            for text in texts:
                if runtime.best_output(text) != expected[text]:
                    failures.append(text)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_bad_files_are_refused(library: Path, tmp_path: Path) -> None:
    fst = _grammar()
    good = tmp_path / "good.ntg"
    export_fst(fst, good)
    truncated = tmp_path / "truncated.ntg"
    truncated.write_bytes(good.read_bytes()[:-100])
    garbage = tmp_path / "garbage.ntg"
    garbage.write_bytes(b"NTG1" + bytes(range(256)) * 4)
    for path in (truncated, garbage, tmp_path / "missing.ntg"):
        with pytest.raises(RuntimeError):
            FstRuntime(library, path)


def test_labels_beyond_bytes_are_not_exported(tmp_path: Path) -> None:
    fst = pynini.Fst()
    start, end = fst.add_state(), fst.add_state()
    fst.set_start(start)
    fst.set_final(end)
    fst.add_arc(start, pynini.Arc(300, 300, pynini.Weight.one(fst.weight_type()), end))
    with pytest.raises(ValueError, match="label outside bytes"):
        export_fst(fst, tmp_path / "wide.ntg")


def test_no_compiler_is_an_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="compiler"):
        build_library(tmp_path, compiler=str(tmp_path / "no-such-cc"))
