"""Scoring and selection of papers against subscriber profiles.

What counts as a match (stemming, hyphen/joined forms, phrases, LaTeX) is defined in
:mod:`newsletter.analysis`. Scoring is BM25 per field (title, abstract) with IDF over the papers
being ranked, title matches multiplied by ``title_boost``, summed with the profile weights. It
is vectorized: the papers are indexed once against the union of all profile terms, and every
subscriber is scored by one sparse matrix product, because a daily run scores 100,000
subscribers against a few hundred papers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from newsletter import analysis
from newsletter.domain import Paper, Profile, ProfileTerm, Reason, ScoredPaper

log = logging.getLogger(__name__)

__all__ = [
    "RankRequest",
    "RankSettings",
    "rank_one",
    "rank_papers",
]


@dataclass(frozen=True)
class RankSettings:
    """BM25 parameters; a title match is worth ``title_boost`` abstract matches."""

    title_boost: float = 2.0
    k1: float = 1.2
    b: float = 0.75


@dataclass(frozen=True)
class RankRequest:
    """One subscriber's query: ``eligible`` limits it to these paper ids (None = all)."""

    profile: Profile
    max_papers: int
    min_score: float
    eligible: frozenset[int] | None = None


_F = npt.NDArray[np.float64]


class _Vocabulary:
    """Columns: one per distinct analyzed term (stem tuple), with the keys that match it."""

    def __init__(self) -> None:
        self.columns: dict[tuple[str, ...], int] = {}
        self.keys: dict[tuple[str, ...], set[int]] = {}
        self._seen: dict[tuple[str, tuple[str, ...]], int] = {}  # subscribers share terms

    def column(self, term: ProfileTerm) -> int:
        seen = self._seen.get((term.text, term.stems))
        if seen is not None:
            return seen
        col = self.columns.get(term.stems)
        if col is None:
            col = len(self.columns)
            self.columns[term.stems] = col
        for key in analysis.variants(term.text, term.stems):
            self.keys.setdefault(key, set()).add(col)
        self._seen[(term.text, term.stems)] = col
        return col


def _bm25_field(
    texts: Sequence[str], vocab: _Vocabulary, settings: RankSettings
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(BM25 weights, match counts) of one field, both terms x papers."""
    keys = vocab.keys
    prefixes = analysis.prefixes(keys)
    rows: list[int] = []
    cols: list[int] = []
    lengths = np.zeros(len(texts), dtype=np.float64)
    for p, text in enumerate(texts):
        arcs, n = analysis.lattice(text)
        lengths[p] = n
        seen: set[tuple[int, int]] = set()  # (column, start): a place counts once per term
        for key, start, _, _ in analysis.find(arcs, n, keys, prefixes):
            for col in keys[key]:
                if (col, start) not in seen:
                    seen.add((col, start))
                    rows.append(col)
                    cols.append(p)
    shape = (max(len(vocab.columns), 1), len(texts))
    counts = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=shape)
    counts.sum_duplicates()
    n_docs = len(texts)
    df = np.diff(counts.indptr).astype(np.float64)  # rows are terms: nnz per row = df
    idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
    avgdl = float(lengths.mean()) if n_docs and lengths.mean() > 0 else 1.0
    coo = counts.tocoo()
    tf = coo.data
    norm = settings.k1 * (1.0 - settings.b + settings.b * lengths[coo.col] / avgdl)
    weights = idf[coo.row] * tf * (settings.k1 + 1.0) / (tf + norm)
    bm25 = sp.csr_matrix((weights, (coo.row, coo.col)), shape=shape)
    return bm25, counts


def _tiebreak_order(papers: Sequence[Paper]) -> list[int]:
    """Paper indices by upvotes desc, then recency (published, first seen), then id."""

    def key(i: int) -> tuple[int, int, int, float, int]:
        p = papers[i]
        pub = p.published
        return (
            -(p.upvotes or 0),
            0 if pub is not None else 1,
            -pub.toordinal() if pub is not None else 0,
            -p.first_seen_at.timestamp(),
            p.id,
        )

    return sorted(range(len(papers)), key=key)


_CHUNK = 4096  # requests scored at once: bounds the dense (requests x papers) block


def rank_papers(
    papers: Sequence[Paper],
    requests: Sequence[RankRequest],
    settings: RankSettings = RankSettings(),
) -> list[tuple[ScoredPaper, ...]]:
    """Select, per request and in request order, its papers best first.

    A paper is selected when it matches at least one positive term (score > 0), scores at least
    ``min_score``, matches no exclusion and is eligible; at most ``max_papers`` of them. Ties go
    to more upvotes, then the more recent paper, then the lower id, so runs are reproducible.
    """
    started = time.perf_counter()
    if not requests:
        return []
    if not papers:
        return [() for _ in requests]
    # Columns are papers in tie-break order: a stable sort on score then breaks ties for free.
    order = _tiebreak_order(papers)
    ordered = [papers[i] for i in order]
    column_of_id = {p.id: j for j, p in enumerate(ordered)}

    vocab = _Vocabulary()
    # (request, column, part): weight part 0 = title, 1 = abstract; exclusion part 0 = matched
    # anywhere, 1 = matched in the title. Parts become column blocks once V is known.
    w_rows: list[int] = []
    w_cols: list[int] = []
    w_parts: list[int] = []
    w_data: list[float] = []
    x_rows: list[int] = []
    x_cols: list[int] = []
    x_parts: list[int] = []
    # Each distinct (text, column, weight, title_only) gets an int id: the reasons cache is
    # keyed by it, and hashing an int is much cheaper than hashing the tuple 10^6 times.
    ref_ids: dict[_TermRef, int] = {}
    refs: list[_TermRef] = []
    positives: list[list[tuple[int, int]]] = []  # per request: (column, ref id)
    for r, req in enumerate(requests):
        mine: list[tuple[int, int]] = []
        for term in req.profile.terms:
            if not term.stems:
                continue
            col = vocab.column(term)
            if term.exclude:
                x_rows.append(r)
                x_cols.append(col)
                x_parts.append(1 if term.title_only else 0)
                continue
            ref = (term.text, col, term.weight, term.title_only)
            ref_id = ref_ids.get(ref)
            if ref_id is None:
                ref_id = ref_ids[ref] = len(refs)
                refs.append(ref)
            mine.append((col, ref_id))
            for part in (0,) if term.title_only else (0, 1):
                w_rows.append(r)
                w_cols.append(col)
                w_parts.append(part)
                w_data.append(term.weight)
        positives.append(mine)
    n_terms = max(len(vocab.columns), 1)
    n_papers = len(ordered)
    shape = (len(requests), 2 * n_terms)

    bt, ct = _bm25_field([p.title for p in ordered], vocab, settings)
    ba, ca = _bm25_field([p.abstract for p in ordered], vocab, settings)
    bt = (bt * settings.title_boost).tocsr()
    # Stacked: rows [0, V) are the boosted title parts, rows [V, 2V) the abstract parts.
    data = sp.vstack([bt, ba]).tocsr()
    weights = sp.csr_matrix(
        (
            np.asarray(w_data, dtype=np.float64),
            (w_rows, np.asarray(w_cols, dtype=np.int64) + n_terms * np.asarray(w_parts)),
        ),
        shape=shape,
    )
    hits = sp.vstack([((ct + ca) > 0), (ct > 0)]).astype(np.float64).tocsr()
    excl = sp.csr_matrix(
        (
            np.ones(len(x_rows), dtype=np.float64),
            (x_rows, np.asarray(x_cols, dtype=np.int64) + n_terms * np.asarray(x_parts)),
        ),
        shape=shape,
    )

    # Per paper: column -> (boosted title part, abstract part), for the reasons of the chosen.
    parts: list[dict[int, list[float]]] = [{} for _ in range(n_papers)]
    for mat, field in ((bt, 0), (ba, 1)):
        coo = mat.tocoo()
        for t, p, v in zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist(), strict=True):
            parts[p].setdefault(t, [0.0, 0.0])[field] = v

    reason_cache: list[dict[int, tuple[Reason, ...]]] = [{} for _ in range(n_papers)]
    indexed = time.perf_counter()
    results: list[tuple[ScoredPaper, ...]] = []
    for lo in range(0, len(requests), _CHUNK):
        hi = min(lo + _CHUNK, len(requests))
        scores: _F = np.asarray((weights[lo:hi] @ data).toarray(), dtype=np.float64)
        excluded = np.asarray((excl[lo:hi] @ hits).toarray()) > 0
        valid = (scores > 0) & ~excluded
        mins = np.array([requests[r].min_score for r in range(lo, hi)], dtype=np.float64)
        valid &= scores >= mins[:, None]
        for r in range(lo, hi):
            elig = requests[r].eligible
            if elig is not None:
                allowed = np.zeros(n_papers, dtype=bool)
                idx = [column_of_id[i] for i in elig if i in column_of_id]
                allowed[idx] = True
                valid[r - lo] &= allowed
        masked = np.where(valid, scores, -np.inf)
        kmax = min(max(max(requests[r].max_papers for r in range(lo, hi)), 0), n_papers)
        best = np.argsort(-masked, axis=1, kind="stable")[:, :kmax]
        # Plain lists from here: per-element numpy indexing would dominate the selection.
        best_scores = np.take_along_axis(masked, best, axis=1).tolist()
        for r, cols, row_scores in zip(range(lo, hi), best.tolist(), best_scores, strict=True):
            chosen: list[ScoredPaper] = []
            terms = positives[r]
            for j, score in zip(cols[: max(requests[r].max_papers, 0)], row_scores, strict=False):
                if score == -math.inf:
                    break
                chosen.append(
                    ScoredPaper(ordered[j], score, _reasons(terms, refs, parts[j], reason_cache[j]))
                )
            results.append(tuple(chosen))
    log.debug(
        "ranked %d papers for %d requests (%d terms) in %.3f s (%.3f s to index)",
        n_papers,
        len(requests),
        len(vocab.columns),
        time.perf_counter() - started,
        indexed - started,
    )
    return results


_TermRef = tuple[str, int, float, bool]  # (text, column, weight, title_only)


def _reason_order(r: Reason) -> tuple[float, str, str]:
    return (-r.contribution, r.term, r.where)


def _reasons(
    terms: Sequence[tuple[int, int]],
    refs: Sequence[_TermRef],
    parts: Mapping[int, Sequence[float]],
    cache: dict[int, tuple[Reason, ...]],
) -> tuple[Reason, ...]:
    """One reason per (matched term, field); they add up to the score.

    ``cache`` holds this paper's reasons per term: subscribers share terms, and building the
    frozen Reason objects is the most expensive part of selecting for 100,000 subscribers.
    """
    out: list[Reason] = []
    for col, ref_id in terms:
        got = parts.get(col)
        if got is None:
            continue
        mine = cache.get(ref_id)
        if mine is None:
            text, _, weight, title_only = refs[ref_id]
            built: list[Reason] = []
            if got[0] > 0:
                built.append(Reason(text, "title", weight * got[0]))
            if got[1] > 0 and not title_only:
                built.append(Reason(text, "abstract", weight * got[1]))
            mine = cache[ref_id] = tuple(built)
        out.extend(mine)
    if len(out) > 1:
        out.sort(key=_reason_order)
    return tuple(out)


def rank_one(
    papers: Sequence[Paper],
    profile: Profile,
    *,
    limit: int | None = None,
    min_score: float = 0.0,
    settings: RankSettings = RankSettings(),
) -> tuple[ScoredPaper, ...]:
    """Ad-hoc ranking (CLI): every paper that matches and is not excluded, best first."""
    max_papers = len(papers) if limit is None else limit
    return rank_papers(papers, [RankRequest(profile, max_papers, min_score)], settings)[0]
