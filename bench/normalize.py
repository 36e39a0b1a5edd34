"""Spoken-form normalisation: what it adds per sentence, against the engines' time to first byte.

    python -m bench.normalize [--runs 5] [--flite-ttfb-ms 35] [--piper-ttfb-ms 300] [--cold]
                              [--corpus sentences.txt | --docs-corpus 9000] [--verbose] [--json out.json]

Measures, in-process on this machine, one call at a time (interleaved sentence by sentence, so a
busy moment hurts every variant alike):
1. loading the normaliser from its compiled cache (import included), and with `--cold` compiling
   the grammars from scratch into a temporary directory (the one-time install cost, about a minute);
2. per sentence, over agent-like sentences with and without numbers: `to_spoken`'s path (pre-check,
   then NeMo on windows around the candidates) against NeMo on the whole sentence, wall-clock p50
   and p95 (what adds to time to first byte) and CPU p50;
3. those figures as a share of the engines' TTFB (defaults: ~35 ms Flite, ~300 ms Piper; pass the
   figures `bench.ttfb` / `bench.piper_ttfb` give on the same machine). Only the first sentence's
   normalisation adds to TTFB: later sentences are normalised while earlier ones play.
With `--corpus` (one sentence a line; `--docs-corpus N` takes N sentences from the installed
packages' descriptions and the standard library's docstrings) it also checks that every sentence the
pre-check skips comes out of NeMo unchanged, and that windowed results equal whole-sentence ones
(ignoring whitespace), printing the exceptions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serve_app.core import spoken

PLAIN = [
    "Sure, I can help you with that right away.",
    "Your appointment is confirmed for Tuesday morning with the hygienist.",
    "I'm sorry, I didn't catch that. Could you say it again?",
    "Let me check the details of your booking for you.",
    "Is there anything else I can help you with today?",
    "Thanks for calling, have a wonderful evening!",
    "I have updated your delivery address as requested.",
    "The technician will call you before arriving at your home.",
    "Okay, I've cancelled the reservation and sent you a confirmation.",
    "You can change your password from the account settings page.",
]
WITH_NUMBERS = [
    "Your order number is 48213 and it ships in 3 days.",
    "The total comes to $1,249.99 including tax.",
    "That will be $3.50, about 15% more than last month.",
    "Your appointment is on March 21, 2024 at 3:30 pm.",
    "I can book you for the 2nd or the 21st of next month.",
    "Please call us back at 555-123-4567 after 9 am.",
    "You can also email support@example.com or visit www.example.com/help.",
    "Dr. Smith will see you at 10:45 AM in room 204.",
    "The flight leaves at 7:05 pm and lands at 11:20 pm local time.",
    "Your balance is $82.17 and the minimum payment is $25.",
    "We are at 221 Baker St., 2nd floor, open until 6 pm.",
    "The package weighs 2.5 kg and measures 30 cm on each side.",
]

DEFAULT_FLITE_TTFB_MS = 35.0
DEFAULT_PIPER_TTFB_MS = 300.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def _summary(wall: list[float], cpu: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_pct(wall, 0.5) * 1000, 2),
        "p95_ms": round(_pct(wall, 0.95) * 1000, 2),
        "max_ms": round(max(wall) * 1000, 2) if wall else float("nan"),
        "cpu_p50_ms": round(_pct(cpu, 0.5) * 1000, 2),
    }


def _time(fn: Any, text: str) -> tuple[float, float, str]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(text)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def measure(normalizer: spoken.SpokenNormalizer, runs: int, verbose: bool) -> dict[str, Any]:
    backend = normalizer._backend
    assert backend is not None

    def whole(text: str) -> str:
        return str(backend.normalize(text, punct_post_process=True))

    variants = {"to_spoken": normalizer.normalize, "nemo_whole_sentence": whole}
    groups = {"plain": PLAIN, "with_numbers": WITH_NUMBERS}
    samples: dict[tuple[str, str], tuple[list[float], list[float]]] = {
        (v, g): ([], []) for v in variants for g in groups
    }
    for fn in variants.values():  # warm both paths once
        for text in PLAIN[:1] + WITH_NUMBERS[:1]:
            fn(text)
    for _ in range(runs):
        for group, texts in groups.items():
            for text in texts:
                for variant, fn in variants.items():
                    wall_s, cpu_s, _ = _time(fn, text)
                    samples[(variant, group)][0].append(wall_s)
                    samples[(variant, group)][1].append(cpu_s)
    result: dict[str, Any] = {}
    for variant in variants:
        result[variant] = {}
        for group in [*groups, "all"]:
            if group == "all":
                wall = samples[(variant, "plain")][0] + samples[(variant, "with_numbers")][0]
                cpu = samples[(variant, "plain")][1] + samples[(variant, "with_numbers")][1]
            else:
                wall, cpu = samples[(variant, group)]
            result[variant][group] = _summary(wall, cpu)
    if verbose:
        for text in PLAIN + WITH_NUMBERS:
            times = [_time(normalizer.normalize, text)[0] for _ in range(runs)]
            print(f"  {statistics.median(times) * 1000:7.2f} ms  {text!r} -> {normalizer.normalize(text)!r}")
    return result


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
    parser.add_argument("--runs", type=int, default=5)
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
    where = normalizer.status()["cache_dir"]
    print(f"load from cache (import included): {report['load_from_cache_s']} s   cache: {where}")

    report["per_sentence"] = measure(normalizer, args.runs, args.verbose)
    ttfb = {"flite": args.flite_ttfb_ms, "piper": args.piper_ttfb_ms}
    report["ttfb_ms"] = ttfb
    print(
        f"\nper-sentence normalisation, {args.runs} runs x {len(PLAIN)} plain + {len(WITH_NUMBERS)} with numbers"
        " (wall ms; share of TTFB at p50 / p95)"
    )
    header = f"{'variant':22} {'sentences':13} {'p50':>7} {'p95':>7} {'cpu p50':>8}"
    header += "".join(f"  {name} ({ms:.0f} ms)".rjust(24) for name, ms in ttfb.items())
    print(header)
    for variant, groups in report["per_sentence"].items():
        for group, s in groups.items():
            shares = "".join(
                f"{s['p50_ms'] / ms * 100:9.1f}% / {s['p95_ms'] / ms * 100:6.1f}%".rjust(24) for ms in ttfb.values()
            )
            print(f"{variant:22} {group:13} {s['p50_ms']:7.2f} {s['p95_ms']:7.2f} {s['cpu_p50_ms']:8.2f}{shares}")

    corpus = args.corpus
    if corpus is None and args.docs_corpus > 0:
        corpus = Path(tempfile.mkdtemp()) / "docs-corpus.txt"
        corpus.write_text("\n".join(docs_corpus(args.docs_corpus)) + "\n")
    if corpus is not None:
        print(f"\nchecking {corpus}")
        report["verify"] = verify(normalizer, corpus)
        print(json.dumps(report["verify"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
