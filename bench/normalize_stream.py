"""Spoken form of streamed text: what is left to normalise after a sentence's last token, per category.

    python -m bench.normalize_stream [--runs 3] [--json out.json]

In-process, one call at a time, for each sentence of tests/unit/spoken_corpus.tsv: the sentence is
cut into LLM-like tokens (words with their leading space, digits in groups of up to three, every
other symbol alone, so the end punctuation is the last token), the tokens are fed to
`IncrementalSpoken.advance` (the work the realtime socket does while the sentence arrives, off the
critical path), then the time of `IncrementalSpoken.finish` (what still stands between the
sentence's completion and its synthesis) is set against `SpokenNormalizer.normalize` of the whole
sentence (what the HTTP path and the socket without incremental work pay), interleaved sentence by
sentence. Two ways the sentence ends: "separate", every token fed, the sentence completed by the
next one (how chat models stream: the period is a token); "joined", the last token not fed (". "
arrives as one fragment, nothing is known about the end in advance). The window memo is off, so
every sentence pays as if never seen. Results are checked to be identical.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from bench.normalize import SENTENCES, _pct, load_sentences
from serve_app.core import spoken
from serve_app.core.spoken_stream import IncrementalSpoken

_TOKENS = re.compile(r" ?[A-Za-z]+| ?\d{1,3}| ?[^\sA-Za-z\d]| +")


def llm_tokens(sentence: str) -> list[str]:
    """Roughly how a chat model's BPE tokenizer cuts English; the last piece gets the space that
    completes the sentence on the socket."""
    pieces = _TOKENS.findall(sentence)
    return pieces


def measure(normalizer: spoken.SpokenNormalizer, groups: dict[str, list[str]], runs: int) -> dict[str, Any]:
    tails: dict[str, dict[str, list[float]]] = {"separate": {}, "joined": {}}
    whole: dict[str, list[float]] = {}
    for _ in range(runs):
        for category, sentences in groups.items():
            for sentence in sentences:
                pieces = llm_tokens(sentence)
                streamed = []
                for mode, fed in (("separate", pieces), ("joined", pieces[:-1])):
                    incremental = IncrementalSpoken(normalizer)
                    pending = ""
                    for piece in fed:
                        pending += piece
                        incremental.advance(pending)
                    started = time.perf_counter()
                    streamed.append(incremental.finish(sentence))
                    tails[mode].setdefault(category, []).append(time.perf_counter() - started)
                started = time.perf_counter()
                expected = normalizer.normalize(sentence)
                whole.setdefault(category, []).append(time.perf_counter() - started)
                if any(result != expected for result in streamed):
                    raise AssertionError(f"streamed result differs for {sentence!r}: {streamed!r} != {expected!r}")
    def ms(values: list[float]) -> dict[str, float]:
        return {"p50": round(_pct(values, 0.5) * 1000, 2), "p95": round(_pct(values, 0.95) * 1000, 2)}

    def pick(by_category: dict[str, list[float]], category: str) -> list[float]:
        return [v for c in groups for v in by_category[c]] if category == "all" else by_category[category]

    table: dict[str, Any] = {}
    for category in [*groups, "all"]:
        separate, joined = pick(tails["separate"], category), pick(tails["joined"], category)
        table[category] = {
            "sentences": len(separate) // runs,
            "whole_sentence_ms": ms(pick(whole, category)),
            "after_completion_ms": {"separate": ms(separate), "joined": ms(joined)},
            "nothing_left_share": {
                "separate": round(sum(v < 0.0005 for v in separate) / len(separate), 2),
                "joined": round(sum(v < 0.0005 for v in joined) / len(joined), 2),
            },
        }
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.normalize_stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sentences", type=Path, default=SENTENCES)
    parser.add_argument("--cache-dir", default=None, help="default: $TTS_NORMALIZE_CACHE_DIR or ./data/tn-cache")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    normalizer = spoken.SpokenNormalizer(args.cache_dir, memo_size=0, build_if_missing=False)
    normalizer.load()
    table = measure(normalizer, load_sentences(args.sentences), args.runs)
    print("ms p50 / p95: whole sentence | left after completion, period separate | period joined")
    for category, row in table.items():
        w, a = row["whole_sentence_ms"], row["after_completion_ms"]
        s, j = a["separate"], a["joined"]
        print(f"{category:<10} {row['sentences']:>4}  {w['p50']:6.2f} / {w['p95']:6.2f}"
              f" | {s['p50']:6.2f} / {s['p95']:6.2f} ({row['nothing_left_share']['separate']:.0%} none left)"
              f" | {j['p50']:6.2f} / {j['p95']:6.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
