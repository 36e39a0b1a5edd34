"""Spoken-form normalisation: what it adds per sentence, against Flite's time to first audio, in one run.

    python -m bench.normalize [--runs 3] [--sentences tests/unit/spoken_corpus.tsv] [--flite-ttfb-ms 35]
                              [--piper-ttfb-ms 300] [--cold] [--corpus sentences.txt | --docs-corpus 9000]
                              [--verbose] [--json out.json]

Measures, in-process on this machine, one call at a time (interleaved sentence by sentence, so a
busy moment hurts every variant alike):
1. loading the normaliser from its compiled cache (import included), and with `--cold` compiling
   the grammars from scratch into a temporary directory (the one-time install cost, about a minute);
2. per sentence of the agent corpus (tests/unit/spoken_corpus.tsv, 13 categories): `to_spoken`'s
   path (pre-check, then NeMo on windows around the candidates; window memo off, so every call pays
   as for a sentence never seen) against NeMo on the whole sentence, wall-clock p50 and p95 per
   category (what adds to time to first byte) and CPU p50; and `to_spoken`'s path with NeMo's
   grammars composed by pynini instead of the C walker ("pynini" rows: the walker's speed-up), with
   how often the two agree;
3. in the same run, libflite's own time to first audio for each sentence's spoken form (in-process,
   the engine alone), and the added time as a share of it per sentence (p50 / p95 per category);
   also as a share of the serving stack's TTFB (defaults: ~35 ms Flite through Serve, ~300 ms Piper;
   pass the figures `bench.ttfb` / `bench.piper_ttfb` give on the same machine). Only the first
   sentence's normalisation adds to TTFB: later sentences are normalised while earlier ones play.
With `--corpus` (one sentence a line; `--docs-corpus N` takes N sentences from the installed
packages' descriptions and the standard library's docstrings) it also checks that every sentence the
pre-check skips comes out of NeMo unchanged, and that windowed results equal whole-sentence ones
(ignoring whitespace), printing the exceptions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serve_app.core import spoken

SENTENCES = Path(__file__).resolve().parents[1] / "tests" / "unit" / "spoken_corpus.tsv"
DEFAULT_FLITE_TTFB_MS = 35.0
DEFAULT_PIPER_TTFB_MS = 300.0


def load_sentences(path: Path) -> dict[str, list[str]]:
    """category -> sentences, from the `category<TAB>sentence` corpus the tests also use."""
    groups: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            category, sentence = line.split("\t", 1)
            groups.setdefault(category, []).append(sentence)
    return groups


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def _time(fn: Any, text: str) -> tuple[float, float, str]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(text)
    return time.perf_counter() - wall, time.process_time() - cpu, out


class FliteFirstAudio:
    """libflite's time to its first audio chunk for one text, through the engine's own streaming code."""

    def __init__(self, voice: str = "slt") -> None:
        from serve_app.engines.flite import FliteLibrary

        self.voice = voice
        self.library = FliteLibrary()
        self.loop = asyncio.new_event_loop()

    def __call__(self, text: str) -> float:
        return self.loop.run_until_complete(self._first_audio(text))

    async def _first_audio(self, text: str) -> float:
        started = time.perf_counter()
        first = float("nan")
        async for piece in self.library.stream(text, self.voice, 1.0):
            if isinstance(piece, tuple) and first != first:  # (rate, pcm): audio
                first = time.perf_counter() - started
        return first

    def close(self) -> None:
        self.loop.close()


def measure(
    normalizer: spoken.SpokenNormalizer,
    groups: dict[str, list[str]],
    runs: int,
    flite: FliteFirstAudio | None,
    pynini_normalizer: spoken.SpokenNormalizer | None = None,
) -> dict[str, Any]:
    """Per category: added wall time (ours, whole-sentence NeMo, and ours with NeMo's grammars composed by
    pynini instead of the walker), CPU, Flite first audio, and the share."""
    backend = normalizer._backend
    assert backend is not None
    for each in (normalizer, pynini_normalizer):
        if each is not None:
            each.memo_size = 0  # every call pays as for a sentence never seen
            each._memo.clear()

    def whole(text: str) -> str:
        return str(backend.normalize(text, punct_post_process=True))

    variants = {"to_spoken": normalizer.normalize, "nemo_whole": whole}
    if pynini_normalizer is not None:
        variants["pynini"] = pynini_normalizer.normalize
    wall: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    share: dict[tuple[str, str], list[float]] = {}
    ttfb: dict[str, list[float]] = {}
    for _ in range(runs):
        for category, texts in groups.items():
            for text in texts:
                engine_s = float("nan")
                for variant, fn in variants.items():
                    wall_s, cpu_s, out = _time(fn, text)
                    if variant == "to_spoken" and flite is not None:
                        engine_s = flite(out)
                        ttfb.setdefault(category, []).append(engine_s)
                    for key in ((variant, category), (variant, "all")):
                        wall.setdefault(key, []).append(wall_s)
                        cpu.setdefault(key, []).append(cpu_s)
                        if engine_s == engine_s:
                            share.setdefault(key, []).append(wall_s / engine_s)
                if flite is not None:
                    ttfb.setdefault("all", []).append(engine_s)
    result: dict[str, Any] = {}
    for (variant, category), values in wall.items():
        entry = {
            "sentences": len(groups.get(category, [])) or sum(len(t) for t in groups.values()),
            "p50_ms": round(_pct(values, 0.5) * 1000, 2),
            "p95_ms": round(_pct(values, 0.95) * 1000, 2),
            "cpu_p50_ms": round(_pct(cpu[(variant, category)], 0.5) * 1000, 2),
        }
        if flite is not None:
            entry["flite_first_audio_p50_ms"] = round(_pct(ttfb[category], 0.5) * 1000, 2)
            entry["share_of_flite_p50_pct"] = round(_pct(share[(variant, category)], 0.5) * 100, 1)
            entry["share_of_flite_p95_pct"] = round(_pct(share[(variant, category)], 0.95) * 100, 1)
        result.setdefault(variant, {})[category] = entry
    return result


def print_table(per_sentence: dict[str, Any], serving_ttfb: dict[str, float]) -> None:
    columns = ("p50", "p95", "cpu50", "flite", "%fl50", "%fl95")
    head = f"{'variant':11} {'category':9} {'n':>4}" + "".join(f" {c:>6}" for c in columns)
    print(head + "".join(f"  %{name}({ms:.0f})50/95".rjust(20) for name, ms in serving_ttfb.items()))
    nan = float("nan")
    for variant, categories in per_sentence.items():
        for category, e in categories.items():
            values = (
                e["p50_ms"],
                e["p95_ms"],
                e["cpu_p50_ms"],
                e.get("flite_first_audio_p50_ms", nan),
                e.get("share_of_flite_p50_pct", nan),
                e.get("share_of_flite_p95_pct", nan),
            )
            line = f"{variant:11} {category:9} {e['sentences']:4d}" + "".join(f" {v:6.2f}" for v in values)
            line += "".join(
                f"{e['p50_ms'] / ms * 100:9.1f} / {e['p95_ms'] / ms * 100:5.1f}".rjust(20)
                for ms in serving_ttfb.values()
            )
            print(line)


def agreement(normalizer: spoken.SpokenNormalizer, groups: dict[str, list[str]], verbose: bool) -> dict[str, Any]:
    """How many sentences the fast path speaks exactly as whole-sentence NeMo does (differences printed)."""
    backend = normalizer._backend
    assert backend is not None
    texts = [text for group in groups.values() for text in group]
    equal = 0
    for text in texts:
        ours, whole = normalizer.normalize(text), backend.normalize(text, punct_post_process=True)
        equal += ours == whole
        if ours != whole or verbose:
            print(f"  {'differs' if ours != whole else 'same'}: {text!r}\n    whole: {whole!r}\n    ours:  {ours!r}")
    return {"sentences": len(texts), "equal": equal, "rate_pct": round(100 * equal / max(1, len(texts)), 1)}


def walker_agreement(
    walked: spoken.SpokenNormalizer, composed: spoken.SpokenNormalizer, texts: list[str], verbose: bool
) -> dict[str, Any]:
    """How many texts the walker speaks exactly as pynini's composition of the same grammars does.

    A difference is a tie: two paths of equal cost through NeMo's grammars, each side keeping the
    one its search met first (seen only in URLs and code on the docs corpus).
    """
    equal = 0
    for text in texts:
        ours, theirs = walked.normalize(text), composed.normalize(text)
        equal += ours == theirs
        if ours != theirs and verbose:
            print(f"  tie broken differently: {text[:100]!r}\n    pynini: {theirs[:160]!r}\n    walker: {ours[:160]!r}")
    return {"texts": len(texts), "equal": equal, "rate_pct": round(100 * equal / max(1, len(texts)), 2)}


def docs_corpus(limit: int, seed: int = 7) -> list[str]:
    """Real English sentences from what is installed: package descriptions and standard-library docstrings."""
    import ast
    import email
    import random
    import re
    import sysconfig

    from serve_app.core.text import split_sentences

    texts: list[str] = []
    for meta in Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info/METADATA"):
        body = email.message_from_string(meta.read_text(errors="ignore")).get_payload()
        if isinstance(body, str):
            texts.append(body)
    for source in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(source.read_text(errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Module):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    code_like = re.compile(r"^\s*(```|>>>|\.\. |\||#|\* |- |=+|\$ )", re.M)
    sentences: set[str] = set()
    for text in texts:
        for paragraph in re.split(r"\n\s*\n", text):
            if code_like.search(paragraph):
                continue
            flat = " ".join(paragraph.split())
            for sentence in split_sentences(flat, max_chars=250) if flat else []:
                if 20 <= len(sentence) <= 250 and re.search(r"[a-z]{3}", sentence):
                    sentences.add(sentence)
    ordered = sorted(sentences)
    random.Random(seed).shuffle(ordered)
    return ordered[:limit]


def verify(normalizer: spoken.SpokenNormalizer, corpus: Path) -> dict[str, Any]:
    backend = normalizer._backend
    assert backend is not None
    lines = [line.strip() for line in corpus.read_text(errors="replace").splitlines() if line.strip()]
    skipped = changed_when_skipped = candidates = mismatched = 0
    whole_s = ours_s = 0.0
    for text in lines:
        started = time.process_time()
        whole = backend.normalize(text, punct_post_process=True)
        whole_s += time.process_time() - started
        if not normalizer.needs_normalization(text):
            skipped += 1
            if whole.split() != text.split():
                changed_when_skipped += 1
                print(f"  skipped but NeMo changes it: {text[:100]!r} -> {whole[:120]!r}")
            continue
        candidates += 1
        started = time.process_time()
        ours = normalizer.normalize(text)
        ours_s += time.process_time() - started
        if "".join(ours.split()) != "".join(whole.split()):
            mismatched += 1
            print(f"  window differs: {text[:100]!r}\n    whole: {whole[:120]!r}\n    ours:  {ours[:120]!r}")
    return {
        "sentences": len(lines),
        "skipped": skipped,
        "skipped_but_changed": changed_when_skipped,
        "with_candidates": candidates,
        "window_mismatches": mismatched,
        "cpu_nemo_whole_s": round(whole_s, 1),
        "cpu_to_spoken_s": round(ours_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sentences", type=Path, default=SENTENCES, help="category<TAB>sentence lines to time")
    parser.add_argument("--flite-ttfb-ms", type=float, default=DEFAULT_FLITE_TTFB_MS)
    parser.add_argument("--piper-ttfb-ms", type=float, default=DEFAULT_PIPER_TTFB_MS)
    parser.add_argument("--cache-dir", default=None, help="default: $TTS_NORMALIZE_CACHE_DIR or ./data/tn-cache")
    parser.add_argument("--cold", action="store_true", help="also time a compile from scratch (about a minute)")
    parser.add_argument("--corpus", type=Path, default=None, help="check skip and window equivalence on this text")
    parser.add_argument(
        "--docs-corpus", type=int, default=0, metavar="N", help="check on N sentences of installed docs instead"
    )
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    report: dict[str, Any] = {}
    if args.cold:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            spoken.build_cache(tmp)
            report["cold_compile_s"] = round(time.perf_counter() - started, 1)
        print(f"cold compile of the English grammars: {report['cold_compile_s']} s")

    cache_dir = Path(args.cache_dir) if args.cache_dir else spoken.default_cache_dir()
    started = time.perf_counter()
    spoken.build_cache(cache_dir)  # no-op when present
    report["cache_present_or_built_s"] = round(time.perf_counter() - started, 1)
    normalizer = spoken.SpokenNormalizer(cache_dir, build_if_missing=False)
    started = time.perf_counter()
    normalizer.load()
    report["load_from_cache_s"] = round(time.perf_counter() - started, 2)
    status = normalizer.status()
    report["walker"] = status["walker"]
    print(f"load from cache (import included): {report['load_from_cache_s']} s   cache: {status['cache_dir']}")
    print(f"grammar walker: {status['walker']}; the 'pynini' rows compose the same grammars with pynini")
    composed = spoken.SpokenNormalizer(cache_dir, build_if_missing=False, walker=False)
    composed.load()

    groups = load_sentences(args.sentences)
    flite: FliteFirstAudio | None = None
    try:
        flite = FliteFirstAudio()
    except OSError as exc:
        print(f"libflite unavailable ({exc}); shares of Flite's first audio left out")
    report["per_sentence"] = measure(normalizer, groups, args.runs, flite, composed)
    report["agreement"] = agreement(normalizer, groups, args.verbose)
    texts = [text for group in groups.values() for text in group]
    report["walker_agreement"] = walker_agreement(normalizer, composed, texts, args.verbose)
    if flite is not None:
        flite.close()
    ttfb = {"flite_serve": args.flite_ttfb_ms, "piper_serve": args.piper_ttfb_ms}
    report["serving_ttfb_ms"] = ttfb
    total = sum(len(t) for t in groups.values())
    print(
        f"\nper-sentence normalisation, {args.runs} runs x {total} sentences of {args.sentences.name}"
        " (wall ms; flite = libflite's first audio for the spoken text, same run; %fl = added time as a"
        " share of it per sentence, p50/p95; then shares of the serving stack's TTFB)"
    )
    print_table(report["per_sentence"], ttfb)
    a = report["agreement"]
    print(f"\nfast path equals whole-sentence NeMo on {a['equal']} of {a['sentences']} ({a['rate_pct']}%)")
    w = report["walker_agreement"]
    print(f"walker equals pynini's composition on {w['equal']} of {w['texts']} ({w['rate_pct']}%)")

    corpus = args.corpus
    if corpus is None and args.docs_corpus > 0:
        corpus = Path(tempfile.mkdtemp()) / "docs-corpus.txt"
        corpus.write_text("\n".join(docs_corpus(args.docs_corpus)) + "\n")
    if corpus is not None:
        print(f"\nchecking {corpus}")
        report["verify"] = verify(normalizer, corpus)
        print(json.dumps(report["verify"], indent=2))
        lines = [line.strip() for line in corpus.read_text(errors="replace").splitlines() if line.strip()]
        report["verify"]["walker"] = walker_agreement(
            normalizer, composed, [t for t in lines if normalizer.needs_normalization(t)], args.verbose
        )
        w = report["verify"]["walker"]
        print(f"walker equals pynini's composition on {w['equal']} of {w['texts']} texts with candidates")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
