"""Benchmark: score 100,000 synthetic subscriber profiles against 400 papers.

Not a test (shared machines are noisy): run it by hand and read the figures.

    .venv/bin/python bench/bench_rank.py                 # 100,000 profiles x 400 papers
    .venv/bin/python bench/bench_rank.py --profiles 20000 --repeat 3

The papers are the 380 distinct seed papers plus 20 synthetic ones. Profiles are drawn with a
fixed seed from words and two-word phrases of the seed titles, like real ones: 2-6 terms,
some quoted phrases, some weighted, some title-only, some exclusions. Every subscriber gets the
same candidates minus a few papers "already sent" (an eligibility set), as in a daily run.

Printed: time to parse the profiles, time for ``rank_papers`` (index + score + select, with
its ScoredPaper and Reason objects), the selected papers per second, and memory: the growth of
the process's peak RSS during ranking, and (``--trace``, in a separate run because tracing
slows allocation-heavy code several-fold) the tracemalloc peak. Target on the project's
2-core machine: ranking <= 10 s, <= 1 GB.

``--semantic`` also ranks with the semantic fusion (:class:`newsletter.rank.SemanticScores`)
on random unit vectors (384 dimensions, one per paper and per profile), right after the
keyword-only ranking, and prints the ratio of the two; ``--encode N`` times the real model
(the ``semantic`` extra) embedding N of the profiles and 400 papers.
"""

from __future__ import annotations

import argparse
import random
import re
import resource
import sys
import time
import tracemalloc
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.domain import Paper  # noqa: E402
from newsletter.ingest import parse_bytes  # noqa: E402
from newsletter.ingest.identity import title_key  # noqa: E402
from newsletter.profile import parse_profile  # noqa: E402
from newsletter.rank import RankRequest, SemanticScores, rank_papers  # noqa: E402

STOP = set("a an and as at by for from in is of on or the to via with without using its".split())


def load_papers(n: int) -> list[Paper]:
    seen: dict[str, Paper] = {}
    t0 = datetime(2026, 11, 23, 6, tzinfo=UTC)
    for path in sorted((ROOT / "seeds").glob("*.txt")):
        for parsed in parse_bytes(
            path.read_bytes(), name=path.name, today=date(2026, 11, 23)
        ).papers:
            key = title_key(parsed.title)
            if key not in seen:
                seen[key] = Paper(
                    id=len(seen) + 1,
                    key=f"title:{key}",
                    title=parsed.title,
                    abstract=parsed.abstract,
                    authors=(),
                    author_count=parsed.author_count,
                    published=parsed.published,
                    upvotes=parsed.upvotes,
                    arxiv_id=None,
                    url=None,
                    first_seen_at=t0 + timedelta(seconds=len(seen)),
                )
    papers = list(seen.values())
    rng = random.Random(7)
    while len(papers) < n:  # synthetic extras: halves of two real papers
        a, b = rng.sample(papers[:380], 2)
        title = " ".join(a.title.split()[:4] + b.title.split()[4:])
        papers.append(
            Paper(
                id=len(papers) + 1,
                key=f"title:synthetic{len(papers)}",
                title=title,
                abstract=a.abstract[: len(a.abstract) // 2] + b.abstract[len(b.abstract) // 2 :],
                authors=(),
                author_count=None,
                published=None,
                upvotes=None,
                arxiv_id=None,
                url=None,
                first_seen_at=t0 + timedelta(seconds=len(papers)),
            )
        )
    return papers[:n]


def vocabulary(
    papers: list[Paper], n_words: int = 1500, n_phrases: int = 600
) -> tuple[list[str], list[str]]:
    words: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    for p in papers:
        text = f"{p.title} {p.abstract}" if n_words > 1500 else p.title
        toks = [t.lower() for t in re.findall(r"[A-Za-z][A-Za-z-]{2,}", text)]
        words.update(t for t in toks if t not in STOP)
        pairs.update(
            f"{x} {y}"
            for x, y in zip(toks, toks[1:], strict=False)
            if x not in STOP and y not in STOP
        )
    return (
        [w for w, _ in words.most_common(n_words)],
        [p for p, _ in pairs.most_common(n_phrases)],
    )


def profile_text(rng: random.Random, words: list[str], phrases: list[str]) -> str:
    terms = []
    for _ in range(rng.randint(2, 6)):
        term = f'"{rng.choice(phrases)}"' if rng.random() < 0.2 else rng.choice(words)
        if rng.random() < 0.15:
            term = "title:" + term
        if rng.random() < 0.3:
            term += f"^{rng.choice([0.5, 1.5, 2, 3])}"
        terms.append(term)
    if rng.random() < 0.3:
        terms.append("-" + rng.choice(words))
    return ", ".join(terms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--papers", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=1, help="rank this many times (warm runs)")
    parser.add_argument("--trace", action="store_true", help="also a tracemalloc run (slow)")
    parser.add_argument(
        "--words",
        type=int,
        default=1500,
        help="distinct words profiles draw from (above 1500: from abstracts too)",
    )
    parser.add_argument(
        "--semantic", action="store_true", help="also rank with semantic fusion (random vectors)"
    )
    parser.add_argument(
        "--encode", type=int, default=0, help="time the real model on N profiles and the papers"
    )
    args = parser.parse_args()

    papers = load_papers(args.papers)
    words, phrases = vocabulary(papers, args.words, args.words // 2)
    rng = random.Random(42)
    texts = [profile_text(rng, words, phrases) for _ in range(args.profiles)]
    all_ids = frozenset(p.id for p in papers)

    t0 = time.perf_counter()
    profiles = [parse_profile(t, who=f"bench #{i}") for i, t in enumerate(texts)]
    parse_s = time.perf_counter() - t0
    ids = sorted(all_ids)
    requests = [
        RankRequest(prof, max_papers=10, min_score=1.0, skip=frozenset(rng.sample(ids, 3)))
        for prof in profiles
    ]
    print(
        f"papers: {len(papers)}  profiles: {len(profiles)}  "
        f"distinct terms: {len({t.stems for p in profiles for t in p.terms})}"
    )
    print(f"parse profiles: {parse_s:.2f} s")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for run in range(1, args.repeat + 1):
        t0 = time.perf_counter()
        results = rank_papers(papers, requests)
        elapsed = time.perf_counter() - t0
        selected = sum(len(r) for r in results)
        print(
            f"rank run {run}: {elapsed:.2f} s  selected {selected} papers "
            f"({selected / elapsed:,.0f}/s); empty issues: {sum(1 for r in results if not r)}"
        )
        del results
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"peak RSS: {rss:.0f} MiB in all; {rss - rss_before:.0f} MiB more during ranking "
        f"(before: {rss_before:.0f} MiB of imports, papers and parsed profiles)"
    )
    if args.semantic:
        semantic = random_vectors(len(papers), len(requests))
        t0 = time.perf_counter()
        rank_papers(papers, requests)
        plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = rank_papers(papers, requests, semantic=semantic)
        fused = time.perf_counter() - t0
        print(
            f"semantic fusion: {fused:.2f} s against {plain:.2f} s keyword-only in the same run "
            f"({fused / plain:.2f}x); selected {sum(len(r) for r in results)} papers"
        )
        del results
    if args.encode:
        encode_speed(papers, texts[: args.encode])
    if args.trace:
        tracemalloc.start()
        rank_papers(papers, requests)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"tracemalloc peak during ranking: {peak / 2**20:.0f} MiB")


def random_vectors(n_papers: int, n_requests: int, dims: int = 384) -> SemanticScores:
    """Unit vectors with a fixed seed; every request its own profile vector."""
    import numpy as np

    gen = np.random.default_rng(7)

    def unit(n: int) -> np.ndarray:  # type: ignore[type-arg]
        v = gen.standard_normal((n, dims)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    # Random directions in 384 dimensions are nearly orthogonal: shift them towards one
    # shared direction so that similarities spread over [0, 0.6] as real ones do.
    shared = unit(1)
    papers = unit(n_papers) + 0.8 * shared
    queries = unit(n_requests) + 0.8 * shared
    papers /= np.linalg.norm(papers, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return SemanticScores(
        papers=papers,
        present=np.ones(n_papers, dtype=bool),
        queries=queries,
        query_of=np.arange(n_requests, dtype=np.int64),
    )


def encode_speed(papers: list[Paper], texts: list[str]) -> None:
    """Embedding speed of the configured default model (needs the semantic extra)."""
    from newsletter.config import SemanticSettings
    from newsletter.semantic import Embedder, paper_text, profile_text

    embedder = Embedder(SemanticSettings(enabled=True))
    t0 = time.perf_counter()
    _ = embedder.dims
    load = time.perf_counter() - t0
    profiles = [profile_text(parse_profile(t)) for t in texts]
    t0 = time.perf_counter()
    embedder.encode(profiles)
    per_profile = (time.perf_counter() - t0) / len(profiles)
    t0 = time.perf_counter()
    embedder.encode([paper_text(p) for p in papers])
    per_paper = (time.perf_counter() - t0) / len(papers)
    print(
        f"model: loaded in {load:.1f} s; {1 / per_profile:,.0f} profiles/s "
        f"(100,000 in {100_000 * per_profile / 60:.1f} min); {1 / per_paper:,.1f} papers/s"
    )


if __name__ == "__main__":
    main()
