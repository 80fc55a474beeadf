"""Scoring and selection of papers against subscriber profiles.

What counts as a match (stemming, hyphen/joined forms, phrases, LaTeX) is defined in
:mod:`newsletter.analysis`. Scoring is BM25 per field (title, abstract) with IDF over the papers
being ranked, title matches multiplied by ``title_boost``, summed with the profile weights. It
is vectorized: the papers are indexed once against the union of all profile terms, and every
subscriber is scored by one sparse matrix product, because a daily run scores 100,000
subscribers against a few hundred papers.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from newsletter import analysis
from newsletter.domain import MatchField, Paper, Profile, ProfileTerm, Reason, ScoredPaper

log = logging.getLogger(__name__)

__all__ = [
    "Adjustments",
    "RankRequest",
    "RankSettings",
    "SemanticScores",
    "rank_one",
    "rank_papers",
]


@dataclass(frozen=True)
class RankSettings:
    """BM25 parameters; a title match is worth ``title_boost`` abstract matches.

    ``coordination``: a paper's summed score is multiplied by (profile terms it matches /
    positive terms of the profile) to this power, so that one broad term (``LLM`` in a title)
    cannot outrank papers that match several of the profile's terms; 0 turns it off. A
    synonym group counts as one term.
    """

    title_boost: float = 2.0
    k1: float = 1.2
    b: float = 0.75
    coordination: float = 1.0


@dataclass(frozen=True)
class RankRequest:
    """One subscriber's query.

    ``skip`` lists the papers this subscriber must not get (a handful: those already in one of
    their issues); ``eligible``, when given, limits them to these ids. Prefer ``skip`` for large
    batches: 100,000 eligible sets of 400 ids are gigabytes, 100,000 skip sets of 10 are not.
    """

    profile: Profile
    max_papers: int
    min_score: float
    eligible: frozenset[int] | None = None
    skip: frozenset[int] = frozenset()  # paper ids never to select (already in an issue)
    # Per-paper additions to the score from the reader's feedback (newsletter/learn.py).
    adjust: Adjustments | None = None


@dataclass(frozen=True)
class Adjustments:
    """Additions to one request's keyword score, per paper id (negative for papers like those
    the reader marked "less like this"), each shown as a reason with its ``label`` (where
    :attr:`MatchField.FEEDBACK`). Added after the coordination factor; a paper no profile
    term matches can be selected on its adjustment alone."""

    scores: Mapping[int, float]
    labels: Mapping[int, str]


_F = npt.NDArray[np.float64]
_I = npt.NDArray[np.int64]
_F32 = npt.NDArray[np.float32]
_B = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class SemanticScores:
    """What the optional semantic matching adds to one ranking call (:mod:`newsletter.semantic`).

    With it, a request's papers are ordered by reciprocal rank fusion of two lists: the
    keyword ranking (the papers it would select, before exclusions) and the ranking by cosine
    similarity between the profile's vector and the paper's (papers at ``min_similarity`` or
    above). A paper scores ``(rrf_k + 1) * (1 / (rrf_k + keyword rank) + weight / (rrf_k +
    semantic rank))``, counting only the lists it is in: the best keyword paper alone scores 1.
    Exclusions, skips and eligibility apply to both lists; ``min_score`` to the keyword list.
    """

    papers: _F32  # one unit row per paper, in the order of the papers ranked (zeros: none)
    present: _B  # per paper: it has a vector
    queries: _F32  # one unit row per distinct profile
    query_of: _I  # per request: its row of ``queries``, or -1 (no semantic list)
    rrf_k: float = 60.0
    weight: float = 1.0
    min_similarity: float = 0.25

    def ordered(self, order: Sequence[int]) -> SemanticScores:
        """The same, with the papers' rows in ``order``."""
        index = np.asarray(order, dtype=np.int64)
        return SemanticScores(
            self.papers[index],
            self.present[index],
            self.queries,
            self.query_of,
            self.rrf_k,
            self.weight,
            self.min_similarity,
        )

    def fuse(self, scores: _F, keyword: _B, blocked: _B, lo: int, hi: int) -> tuple[_F, _B, _F, _B]:
        """(fused scores, selectable, similarities, in the semantic list) of requests
        [lo, hi), from their keyword ``scores`` and which papers the keyword ranking would
        take (``keyword``); ``blocked`` papers (skipped, not eligible) are in neither list."""
        rows = self.query_of[lo:hi]
        has = rows >= 0
        similarity = np.zeros(scores.shape, dtype=np.float64)
        if has.any() and self.papers.shape[1]:
            similarity[has] = self.queries[rows[has]] @ self.papers.T
        semantic = (similarity >= self.min_similarity) & has[:, None] & self.present[None, :]
        semantic &= ~blocked
        k = self.rrf_k
        fused = np.where(keyword, 1.0 / (k + _ranks(scores, keyword)), 0.0)
        fused += np.where(semantic, self.weight / (k + _ranks(similarity, semantic)), 0.0)
        fused *= k + 1.0
        return fused, keyword | semantic, similarity, semantic


def _ranks(values: _F, valid: _B) -> _F:
    """Per row, each valid cell's rank (1 = highest value; ties keep column order, which is
    the tie-break order); invalid cells get ranks after every valid one."""
    masked = np.where(valid, values, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")
    ranks = np.empty(values.shape, dtype=np.float64)
    positions = np.broadcast_to(np.arange(1, values.shape[1] + 1, dtype=np.float64), values.shape)
    np.put_along_axis(ranks, order, positions, axis=1)
    return ranks


#: A weight or hit "part" is an index into this: 0 is the title, 1 the abstract.
_PART_FIELD = (MatchField.TITLE, MatchField.ABSTRACT, MatchField.AUTHORS)
#: Blocks of the stacked matrices: title, abstract, authors (weights and data); matched
#: anywhere in the text, in the title, among the authors (hits, exclusions).
_PARTS = 3
_AUTHOR_KEY = "\x00author"  # never a stem: an author column has no text keys


def _hit_part(term: ProfileTerm) -> int:
    """The hits block a term is matched in: the text (0), the title only (1), authors (2)."""
    return 2 if term.author else 1 if term.title_only else 0


class _ExclusionVocabulary:
    """The columns of exclusions: matched with :func:`analysis.light_stem` on
    :func:`analysis.light_lattice`, more strictly than terms (see :mod:`newsletter.analysis`)."""

    def __init__(self) -> None:
        self.columns: dict[frozenset[tuple[str, ...]], int] = {}
        self.keys: dict[tuple[str, ...], set[int]] = {}
        self._seen: dict[str, int] = {}
        self.authors: dict[int, tuple[str, ...]] = {}  # author columns: the name's words

    def column(self, term: ProfileTerm) -> int:
        if term.author:
            tokens = analysis.author_tokens(term.text)
            author_key = frozenset({(_AUTHOR_KEY, *tokens)})
            author_col = self.columns.setdefault(author_key, len(self.columns))
            self.authors[author_col] = tokens
            return author_col
        seen = self._seen.get(term.text)
        if seen is not None:
            return seen
        variants = analysis.light_variants(term.text) or frozenset({term.stems})
        col = self.columns.get(variants)
        if col is None:
            col = self.columns[variants] = len(self.columns)
            for key in variants:
                self.keys.setdefault(key, set()).add(col)
        self._seen[term.text] = col
        return col


class _Vocabulary:
    """Columns: one per distinct analyzed term (stem tuple), with the keys that match it."""

    def __init__(self) -> None:
        self.columns: dict[tuple[tuple[str, ...], bool], int] = {}  # (stems, exact)
        self.keys: dict[tuple[str, ...], set[int]] = {}
        self._seen: dict[tuple[str, tuple[str, ...], bool], int] = {}  # subscribers share terms
        self.authors: dict[int, tuple[str, ...]] = {}  # author columns: the name's words

    def column(self, term: ProfileTerm) -> int:
        if term.author:
            tokens = analysis.author_tokens(term.text)
            author_key = ((_AUTHOR_KEY, *tokens), False)
            author_col = self.columns.setdefault(author_key, len(self.columns))
            self.authors[author_col] = tokens
            return author_col
        seen = self._seen.get((term.text, term.stems, term.exact))
        if seen is not None:
            return seen
        col = self.columns.get((term.stems, term.exact))
        if col is None:
            col = len(self.columns)
            self.columns[(term.stems, term.exact)] = col
        for key in analysis.variants(term.text, term.stems, term.exact):
            self.keys.setdefault(key, set()).add(col)
        self._seen[(term.text, term.stems, term.exact)] = col
        return col


def _match_counts(
    texts: Sequence[str],
    vocab: _Vocabulary | _ExclusionVocabulary,
    lattice: Callable[[str], tuple[tuple[tuple[tuple[str, int, int, int], ...], ...], int]],
) -> tuple[sp.csr_matrix, _F]:
    """(terms x papers match counts, papers' lengths in tokens) of one field."""
    keys = vocab.keys
    prefixes = analysis.prefixes(keys)
    rows: list[int] = []
    cols: list[int] = []
    lengths = np.zeros(len(texts), dtype=np.float64)
    for p, text in enumerate(texts):
        arcs, n = lattice(text)
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
    return counts, lengths


def _bm25_field(
    texts: Sequence[str], vocab: _Vocabulary, settings: RankSettings
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(BM25 weights, match counts) of one field, both terms x papers."""
    counts, lengths = _match_counts(texts, vocab, analysis.lattice)
    shape = counts.shape
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


def _author_hits(
    papers: Sequence[Paper], authors: Mapping[int, tuple[str, ...]], n_cols: int
) -> sp.csr_matrix:
    """columns x papers: 1 where an ``author:`` column names one of the paper's authors.

    Papers are indexed by the words of their author names, so each term looks only at the
    papers that have its first word among their authors."""
    shape = (n_cols, len(papers))
    if not authors:
        return sp.csr_matrix(shape, dtype=np.float64)
    by_word: dict[str, set[tuple[int, int]]] = {}
    names: list[list[tuple[str, ...]]] = []
    for p, paper in enumerate(papers):
        tokens = [analysis.author_tokens(a) for a in paper.authors]
        names.append(tokens)
        for k, name in enumerate(tokens):
            for word in name:
                by_word.setdefault(word, set()).add((p, k))
    rows: list[int] = []
    cols: list[int] = []
    for col, term in authors.items():
        if not term:
            continue
        found = {
            p for p, k in by_word.get(term[0], ()) if analysis.author_matches(term, names[p][k])
        }
        rows.extend([col] * len(found))
        cols.extend(sorted(found))
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=shape)


def _author_weights(hits: sp.csr_matrix, settings: RankSettings) -> sp.csr_matrix:
    """An author match scores as a match in a short title would: ``title_boost`` times the
    name's BM25 IDF over the papers (a prolific author counts less than a rare one)."""
    n_docs = hits.shape[1]
    df = np.diff(hits.indptr).astype(np.float64)
    idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
    coo = hits.tocoo()
    weights = settings.title_boost * idf[coo.row]
    return sp.csr_matrix((weights, (coo.row, coo.col)), shape=hits.shape)


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
    semantic: SemanticScores | None = None,
) -> list[tuple[ScoredPaper, ...]]:
    """Select, per request and in request order, its papers best first.

    A paper is selected when it matches at least one positive term (score > 0), scores at least
    ``min_score``, matches no exclusion and is eligible; at most ``max_papers`` of them. Ties go
    to more upvotes, then the more recent paper, then the lower id, so runs are reproducible.
    With ``semantic`` (rows in the order of ``papers``), papers close in meaning to the profile
    are selected too, and the order is their fusion (:class:`SemanticScores`).
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
    excluded = _ExclusionVocabulary()
    # (request, column, part): weight part 0 = title, 1 = abstract; exclusion part 0 = matched
    # anywhere, 1 = matched in the title. Parts become column blocks once V is known.
    w_rows: list[int] = []
    w_cols: list[int] = []
    w_parts: list[int] = []
    w_data: list[float] = []
    w_refs: list[int] = []
    x_rows: list[int] = []
    x_cols: list[int] = []
    x_parts: list[int] = []
    # Coordination: each request's positive terms as groups of alternative (column, title
    # only) cells; distinct groups are shared across requests (subscribers share terms).
    group_ids: dict[tuple[tuple[int, int], ...], int] = {}
    q_rows: list[int] = []
    q_cols: list[int] = []
    # Each distinct (text, column, weight, title_only) gets an int id: the reasons cache is
    # keyed by it, and hashing an int is much cheaper than hashing the tuple 10^6 times.
    ref_ids: dict[_TermRef, int] = {}
    refs: list[_TermRef] = []
    for r, req in enumerate(requests):
        alternatives: dict[object, list[tuple[int, int]]] = {}
        for term in req.profile.terms:
            if not term.stems:
                continue
            if term.exclude:
                x_rows.append(r)
                x_cols.append(excluded.column(term))
                x_parts.append(_hit_part(term))
                continue
            col = vocab.column(term)
            # A synonym group, or a term with the expansions that name it in ``via``.
            group = term.group or (term.via or term.text, term.title_only)
            alternatives.setdefault(group, []).append((col, _hit_part(term)))
            ref = (term.shown, col, term.weight, term.title_only)
            ref_id = ref_ids.get(ref)
            if ref_id is None:
                ref_id = ref_ids[ref] = len(refs)
                refs.append(ref)
            parts = (2,) if term.author else (0,) if term.title_only else (0, 1)
            for part in parts:
                w_rows.append(r)
                w_cols.append(col)
                w_parts.append(part)
                w_data.append(term.weight)
                w_refs.append(ref_id)
        for cells in alternatives.values():
            key = tuple(sorted(set(cells)))
            gid = group_ids.setdefault(key, len(group_ids))
            q_rows.append(r)
            q_cols.append(gid)
    n_terms = max(len(vocab.columns), 1)
    n_papers = len(ordered)
    shape = (len(requests), _PARTS * n_terms)

    bt, ct = _bm25_field([p.title for p in ordered], vocab, settings)
    ba, ca = _bm25_field([p.abstract for p in ordered], vocab, settings)
    bt = (bt * settings.title_boost).tocsr()
    cu = _author_hits(ordered, vocab.authors, n_terms)
    bu = _author_weights(cu, settings)
    # Stacked: rows [0, V) are the boosted title parts, [V, 2V) the abstract parts, [2V, 3V)
    # the author parts (non-zero only in the rows of author: terms).
    data = sp.vstack([bt, ba, bu]).tocsr()
    weights = sp.csr_matrix(
        (
            np.asarray(w_data, dtype=np.float64),
            (w_rows, np.asarray(w_cols, dtype=np.int64) + n_terms * np.asarray(w_parts)),
        ),
        shape=shape,
    )
    hits = sp.vstack([((ct + ca) > 0), (ct > 0), (cu > 0)]).astype(np.float64).tocsr()
    n_excluded = max(len(excluded.columns), 1)
    excl = sp.csr_matrix(
        (
            np.ones(len(x_rows), dtype=np.float64),
            (x_rows, np.asarray(x_cols, dtype=np.int64) + n_excluded * np.asarray(x_parts)),
        ),
        shape=(len(requests), _PARTS * n_excluded),
    )
    if x_rows:
        xt, _ = _match_counts([p.title for p in ordered], excluded, analysis.light_lattice)
        xa, _ = _match_counts([p.abstract for p in ordered], excluded, analysis.light_lattice)
        xu = _author_hits(ordered, excluded.authors, n_excluded)
        excluded_hits = sp.vstack([((xt + xa) > 0), (xt > 0), (xu > 0)]).astype(np.float64).tocsr()
    else:
        excluded_hits = sp.csr_matrix((_PARTS * n_excluded, n_papers), dtype=np.float64)
    coordination = _Coordination.build(
        group_ids, q_rows, q_cols, len(requests), n_terms, hits, settings.coordination
    )

    # Every positive (request, term, part) entry, in request order, with the term's reference:
    # the reasons of a selected (request, paper) pair are its entries with a non-zero cell.
    w_parts_array = np.asarray(w_parts, dtype=np.int64)
    # Reason order: contribution desc, then term text, then title before abstract.
    text_rank = np.empty(len(refs), dtype=np.int64)
    text_rank[sorted(range(len(refs)), key=lambda k: refs[k][0])] = np.arange(len(refs))
    entries = _TermEntries(
        request_start=np.searchsorted(
            np.asarray(w_rows, dtype=np.int64), np.arange(len(requests) + 1)
        ).astype(np.int64),
        cells=np.asarray(w_cols, dtype=np.int64) + n_terms * w_parts_array,
        weights=np.asarray(w_data, dtype=np.float64),
        ref_ids=np.asarray(w_refs, dtype=np.int64),
        parts=w_parts_array,
        text_rank=text_rank,
        refs=refs,
    )
    skip_r, skip_c = _skip_cells(requests, column_of_id)
    adjustments = _adjustment_cells(requests, column_of_id)
    indexed = time.perf_counter()
    results: list[tuple[ScoredPaper, ...]] = []
    batch = _Batch(
        requests,
        ordered,
        weights,
        data,
        excl,
        excluded_hits,
        entries,
        (skip_r, skip_c),
        coordination,
        adjustments,
        semantic.ordered(order) if semantic is not None else None,
    )
    with _no_cyclic_gc():
        for lo in range(0, len(requests), _CHUNK):
            results.extend(_select_chunk(batch, lo, min(lo + _CHUNK, len(requests))))
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
#: The reason of a paper in the semantic list; its contribution is the cosine similarity.
SEMANTIC_LABEL = "close in meaning to your profile"


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of result objects.

    Every allocation burst makes CPython scan the ever larger young generations, which made
    object creation here about five times slower than it is; the objects hold no cycles, so
    nothing is lost by collecting them later.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _skip_cells(
    requests: Sequence[RankRequest], column_of_id: Mapping[int, int]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(request, column) of every paper a request must not get, from ``skip`` and ``eligible``.

    ``eligible`` is turned into its complement here, once: the loop is over the (small) sets,
    never over request x paper.
    """
    rows: list[int] = []
    cols: list[int] = []
    all_ids = column_of_id.keys()
    for r, req in enumerate(requests):
        banned = req.skip if req.eligible is None else req.skip | (all_ids - req.eligible)
        for paper_id in banned:
            col = column_of_id.get(paper_id)
            if col is not None:
                rows.append(r)
                cols.append(col)
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)


@dataclass(frozen=True)
class _TermEntries:
    """The positive profile-term entries of all requests, from which reasons are built.

    An entry is one (request, term, part) with a weight: a term counts in the title part and,
    unless ``title_only``, in the abstract part. Entries are sorted by request; the arrays
    ``cells``, ``weights``, ``ref_ids`` and ``parts`` hold one element per entry. The reasons
    of a selected (request, paper) pair are the request's entries whose cell of the BM25 data
    is non-zero for that paper.
    """

    request_start: _I  # request r's entries are [request_start[r], request_start[r + 1])
    cells: _I  # the entry's row of the stacked BM25 data: part * n_terms + term column
    weights: _F  # the term's profile weight
    ref_ids: _I  # the term's index in ``refs``
    parts: _I  # 0 = title, 1 = abstract (an index into _PART_FIELD)
    text_rank: _I  # per ref id: the rank of the term text in sorted order, a reason tie-break
    refs: Sequence[_TermRef]  # per ref id: the term as written, column, weight, title_only


@dataclass(frozen=True)
class _Batch:
    """Everything one ranking call indexed once and every chunk of requests reads."""

    requests: Sequence[RankRequest]
    ordered: Sequence[Paper]  # papers in tie-break order: the columns
    weights: sp.csr_matrix  # requests x (2 x terms): profile weights, title then abstract part
    data: sp.csr_matrix  # (2 x terms) x papers: boosted title and abstract BM25
    excl: sp.csr_matrix  # requests x (2 x exclusions): an exclusion anywhere / title only
    excluded_hits: sp.csr_matrix  # (2 x exclusions) x papers: matched anywhere / in the title
    entries: _TermEntries
    skips: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]
    coordination: _Coordination
    # Per request: (columns, values) of its adjustments, or None (the usual case).
    adjustments: Sequence[tuple[_I, _F] | None]
    semantic: SemanticScores | None = None  # rows in column (tie-break) order


def _adjustment_cells(
    requests: Sequence[RankRequest], column_of_id: Mapping[int, int]
) -> list[tuple[_I, _F] | None]:
    out: list[tuple[_I, _F] | None] = []
    for req in requests:
        if req.adjust is None or not req.adjust.scores:
            out.append(None)
            continue
        pairs = [(column_of_id[i], v) for i, v in req.adjust.scores.items() if i in column_of_id]
        cols = np.asarray([c for c, _ in pairs], dtype=np.int64)
        out.append((cols, np.asarray([v for _, v in pairs], dtype=np.float64)))
    return out


@dataclass(frozen=True)
class _Coordination:
    """How many of its profile's terms each paper matches, per request: the coordination
    factor (see :class:`RankSettings`)."""

    queries: sp.csr_matrix  # requests x groups: 1 for each positive term (group) of a request
    group_hits: sp.csr_matrix  # groups x papers: 1 where any alternative of the group matched
    sizes: _F  # per request: its number of positive terms (groups)
    power: float

    @classmethod
    def build(
        cls,
        group_ids: Mapping[tuple[tuple[int, int], ...], int],
        q_rows: Sequence[int],
        q_cols: Sequence[int],
        n_requests: int,
        n_terms: int,
        hits: sp.csr_matrix,
        power: float,
    ) -> _Coordination:
        rows: list[int] = []
        cols: list[int] = []
        for cells, gid in group_ids.items():
            for col, part in cells:
                rows.append(gid)
                cols.append(col + n_terms * part)  # the hits row to read
        n_groups = max(len(group_ids), 1)
        alternatives = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float64), (rows, cols)),
            shape=(n_groups, _PARTS * n_terms),
        )
        group_hits = ((alternatives @ hits) > 0).astype(np.float64).tocsr()
        queries = sp.csr_matrix(
            (np.ones(len(q_rows), dtype=np.float64), (q_rows, q_cols)),
            shape=(n_requests, n_groups),
        )
        sizes = np.asarray(queries.sum(axis=1), dtype=np.float64).ravel()
        return cls(queries, group_hits, sizes, power)

    def matched(self, lo: int, hi: int) -> _F:
        """requests [lo, hi) x papers: how many of the request's terms the paper matches."""
        return np.asarray((self.queries[lo:hi] @ self.group_hits).toarray(), dtype=np.float64)

    def factor(self, matched: _F, lo: int, hi: int) -> _F:
        if self.power == 0:
            return np.ones_like(matched)
        sizes = np.maximum(self.sizes[lo:hi], 1.0)[:, None]
        factor: _F = (matched / sizes) ** self.power
        return factor


def _select_chunk(batch: _Batch, lo: int, hi: int) -> list[tuple[ScoredPaper, ...]]:
    """Score, filter and select requests [lo, hi); build their ScoredPapers with reasons.

    All of it is array work except the last step, which creates the result objects.
    """
    requests, ordered, data = batch.requests, batch.ordered, batch.data
    entries = batch.entries
    n = hi - lo
    scores: _F = np.asarray((batch.weights[lo:hi] @ data).toarray(), dtype=np.float64)
    coordination = batch.coordination
    matched = coordination.matched(lo, hi)
    factors = coordination.factor(matched, lo, hi)
    scores *= factors
    for r in range(lo, hi):
        cells = batch.adjustments[r]
        if cells is not None:
            scores[r - lo, cells[0]] += cells[1]
    mins = np.fromiter((requests[r].min_score for r in range(lo, hi)), np.float64, n)
    valid = (scores > 0) & (scores >= mins[:, None])
    skip_r, skip_c = batch.skips
    in_chunk = (skip_r >= lo) & (skip_r < hi)
    valid[skip_r[in_chunk] - lo, skip_c[in_chunk]] = False
    similarity: _F | None = None
    close: _B | None = None
    keyword_ok: _B | None = None
    if batch.semantic is not None:  # fused first, exclusions after
        keyword_ok = valid.copy()
        blocked = np.zeros(scores.shape, dtype=bool)
        blocked[skip_r[in_chunk] - lo, skip_c[in_chunk]] = True
        scores, valid, similarity, close = batch.semantic.fuse(scores, valid, blocked, lo, hi)
    valid &= ~(np.asarray((batch.excl[lo:hi] @ batch.excluded_hits).toarray()) > 0)
    maxp = np.fromiter((max(requests[r].max_papers, 0) for r in range(lo, hi)), np.int64, n)
    kmax = int(min(maxp.max(initial=0), scores.shape[1]))
    masked = np.where(valid, scores, -np.inf)
    # Columns are in tie-break order, so a stable sort on -score breaks ties correctly.
    best = np.argsort(-masked, axis=1, kind="stable")[:, :kmax]
    best_scores = np.take_along_axis(masked, best, axis=1)
    keep = (np.arange(kmax)[None, :] < maxp[:, None]) & (best_scores > -np.inf)
    sel_r, sel_k = np.nonzero(keep)  # row-major: grouped by request, best first
    sel_p = best[sel_r, sel_k]
    sel_s = best_scores[sel_r, sel_k]

    # Reasons: expand each selected pair into its request's entries and look the cells up.
    starts = entries.request_start[sel_r + lo]
    counts = entries.request_start[sel_r + lo + 1] - starts
    pair = np.repeat(np.arange(len(sel_r)), counts)
    offset = np.arange(len(pair)) - np.repeat(np.cumsum(counts) - counts, counts)
    entry = np.repeat(starts, counts) + offset
    contrib = entries.weights[entry] * np.asarray(data[entries.cells[entry], sel_p[pair]]).ravel()
    contrib *= factors[sel_r, sel_p][pair]  # each term's share of the coordinated score
    hit = contrib > 0
    if keyword_ok is not None:  # a paper selected on meaning alone got nothing from its terms
        hit &= keyword_ok[sel_r, sel_p][pair]
    pair, entry, contrib = pair[hit], entry[hit], contrib[hit]
    ref_ids, parts = entries.ref_ids[entry], entries.parts[entry]
    order = np.lexsort((parts, entries.text_rank[ref_ids], -contrib, pair))
    pair, contrib = pair[order], contrib[order]
    ref_ids, parts = ref_ids[order], parts[order]
    bounds = np.searchsorted(pair, np.arange(len(sel_r) + 1)).tolist()
    # A reason depends only on (term as written + weight, field, paper), which subscribers
    # share: build each distinct one once and reuse it (object creation is the costly part).
    ref_part = ref_ids * _PARTS + parts
    # The contribution also depends on the coordination (terms matched, profile size), which
    # differs between subscribers: part of the key, as small integers.
    span = int(max(coordination.sizes.max(initial=0.0), 1.0)) + 1
    coord_key = matched[sel_r, sel_p][pair].astype(np.int64) * span + np.minimum(
        coordination.sizes[sel_r + lo][pair].astype(np.int64), span - 1
    )
    keys = (ref_part * scores.shape[1] + sel_p[pair]) * span * span + coord_key
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    refs = entries.refs
    distinct = [
        Reason(refs[ref][0], _PART_FIELD[part], value)
        for ref, part, value in zip(
            ref_ids[first].tolist(),
            parts[first].tolist(),
            contrib[first].tolist(),
            strict=True,
        )
    ]
    reasons = [distinct[k] for k in inverse.tolist()]
    out: list[list[ScoredPaper]] = [[] for _ in range(n)]
    for i, (r, p, score) in enumerate(
        zip(sel_r.tolist(), sel_p.tolist(), sel_s.tolist(), strict=True)
    ):
        why = tuple(reasons[bounds[i] : bounds[i + 1]])
        adjust = requests[r + lo].adjust
        if adjust is not None and ordered[p].id in adjust.scores:
            extra = Reason(
                adjust.labels[ordered[p].id], MatchField.FEEDBACK, adjust.scores[ordered[p].id]
            )
            why = tuple(sorted((*why, extra), key=lambda x: -x.contribution))
        if close is not None and similarity is not None and close[r, p]:
            why = (*why, Reason(SEMANTIC_LABEL, MatchField.SEMANTIC, float(similarity[r, p])))
        out[r].append(ScoredPaper(ordered[p], score, why))
    return [tuple(chosen) for chosen in out]


def rank_one(
    papers: Sequence[Paper],
    profile: Profile,
    *,
    limit: int | None = None,
    min_score: float = 0.0,
    settings: RankSettings = RankSettings(),
    semantic: SemanticScores | None = None,
) -> tuple[ScoredPaper, ...]:
    """Ad-hoc ranking (CLI): every paper that matches and is not excluded, best first."""
    max_papers = len(papers) if limit is None else limit
    request = RankRequest(profile, max_papers, min_score)
    return rank_papers(papers, [request], settings, semantic)[0]
