"""Learning from a reader's feedback: per-subscriber adjustments to the keyword score.

A subscriber's "more / less like this" judgments train a linear model over the papers' TF-IDF
vectors, as arxiv-sanity-lite does per tag (scikit-learn): one vectorizer is fitted per
ranking call on its candidates and the papers judged by any of its subscribers, then every
subscriber *with judgments* gets a linear SVM (likes positive; dislikes and, as weak
negatives, the other candidates negative; classes balanced; fixed ``random_state``). Its
decision values on the candidates become :class:`~newsletter.rank.Adjustments`, added to the
keyword score before selection (see :func:`feedback_adjustments` for the blend). Subscribers
without judgments cost nothing: no vectorizer is fitted (nor scikit-learn imported) when
nobody in the call has any; one with judgments costs about 6 ms (400 candidates).

Chosen on ``bench/bench_relevance.py --feedback`` (docs/RELEVANCE.md): the SVM beat a Rocchio
centroid (0.839 nDCG@10 at best) and two-word phrases beat words alone (0.844).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from newsletter.domain import Judgment, Paper
from newsletter.rank import Adjustments

log = logging.getLogger(__name__)

__all__ = ["LearnSettings", "feedback_adjustments"]

K = TypeVar("K", bound=Hashable)
_F = npt.NDArray[np.float64]
_I = npt.NDArray[np.int64]

#: Longest title shown in a feedback reason; longer ones are cut at a word and end in "…".
LABEL_TITLE_CHARS = 60
LIKE_LABEL = "like papers you marked"
DISLIKE_LABEL = "unlike papers you marked less"


@dataclass(frozen=True)
class LearnSettings:
    """The blend: ``contribution = beta × s``, ``s`` in [-1, 1] (see :func:`feedback_adjustments`).

    ``beta`` is in keyword-score units (BM25 sums: 1-15 for a selected paper, min score 1 by
    default): 4 lifts the papers most like the liked ones over a weak keyword match (1-4),
    or alone over the default min score, but not over a strong match (8+). ``quantile``: the
    share of candidates below ``s = 1`` (0.95: the top 5% get all of ``beta``). ``floor``: a
    paper whose ``|s|`` is below it gets no adjustment (and no reason line), so that the
    model's noise on unrelated papers neither reorders them nor fills their reasons. ``c``:
    the SVM's regularization (arxiv-sanity-lite's 0.01); ``weak_weight``: the weight of one
    unjudged candidate as a weak negative, relative to one dislike.
    """

    beta: float = 4.0
    floor: float = 0.3
    quantile: float = 0.95
    c: float = 0.01
    weak_weight: float = 0.1


def feedback_adjustments(
    candidates: Sequence[Paper],
    judged_papers: Mapping[int, Paper],
    judgments: Mapping[K, Mapping[int, Judgment]],
    settings: LearnSettings = LearnSettings(),
) -> dict[K, Adjustments]:
    """Per subscriber (any hashable key) with judgments: additions to their candidates' scores.

    ``judged_papers`` holds the judged papers by id that are not candidates (a judgment of a
    paper in neither is ignored). For each subscriber, the model's decision value ``d`` on
    each candidate is put on the scale of the candidates' own values (on the training
    papers themselves it says little: they sit on the margin), with ``m`` their median and
    ``q``/``q'`` their ``quantile``/``1 - quantile``::

        s = clip((d - m) / (q - m), 0, 1)     if d > m (and the subscriber has likes)
        s = -clip((m - d) / (m - q'), 0, 1)   if d < m (and the subscriber has dislikes)
        contribution = beta × s, or none when |s| < floor

    So the 5% of candidates most like the likes get ``+beta``, those most like the dislikes
    ``-beta``. Without dislikes no contribution is negative (being unlike one's likes is no
    evidence against a paper); without likes none is positive. Each is labelled with the most
    similar (cosine) liked paper ("like papers you marked: …") or, when negative, disliked one
    ("unlike papers you marked less: …").
    """
    started = time.perf_counter()
    by_id: dict[int, Paper] = {p.id: p for p in candidates}
    for pid, paper in judged_papers.items():
        by_id.setdefault(pid, paper)
    work = {
        key: {pid: j for pid, j in marks.items() if pid in by_id}
        for key, marks in judgments.items()
    }
    work = {key: marks for key, marks in work.items() if marks}
    if not work or not candidates:
        return {}
    import sklearn

    papers = list(by_id.values())
    row_of = {p.id: r for r, p in enumerate(papers)}
    matrix = _vectorize(papers)
    if matrix is None:
        return {}
    cand_rows = np.asarray([row_of[p.id] for p in candidates], dtype=np.int64)
    cand_ids = [p.id for p in candidates]
    out: dict[K, Adjustments] = {}
    # The matrix is ours and finite: skip scikit-learn's checks of it on every fit.
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for key, marks in work.items():
            likes, dislikes = (
                np.asarray([row_of[pid] for pid, j in sorted(marks.items()) if j is want], np.int64)
                for want in (Judgment.LIKE, Judgment.DISLIKE)
            )
            adjust = _adjust(matrix, cand_rows, cand_ids, papers, likes, dislikes, settings)
            if adjust is not None:
                out[key] = adjust
    log.debug(
        "feedback models for %d subscribers over %d papers in %.3f s",
        len(work),
        len(papers),
        time.perf_counter() - started,
    )
    return out


def _vectorize(papers: Sequence[Paper]) -> sp.csr_matrix | None:
    """L2-normalized TF-IDF rows (sublinear tf, words and two-word phrases) of title + abstract;
    None when the papers hold no word but stop words."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(
        strip_accents="unicode",
        lowercase=True,
        stop_words="english",
        token_pattern=r"(?u)\b[a-zA-Z_][a-zA-Z0-9_]+\b",
        ngram_range=(1, 2),
        sublinear_tf=True,
        norm="l2",
        dtype=np.float64,
    )
    texts = [f"{p.title}. {p.abstract}" for p in papers]
    try:
        return sp.csr_matrix(vectorizer.fit_transform(texts))
    except ValueError:  # "empty vocabulary"
        return None


def _decision(
    matrix: sp.csr_matrix,
    cand_rows: _I,
    likes: _I,
    dislikes: _I,
    settings: LearnSettings,
) -> _F:
    """The linear model's decision value on each candidate (higher: more like the likes).

    Positives: the likes, else (dislikes only) the unjudged candidates; negatives: the
    dislikes, plus the unjudged candidates when there are likes. An unjudged candidate weighs
    ``weak_weight`` of a judged paper, then both classes are scaled to equal total weight.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    judged = np.zeros(matrix.shape[0], dtype=bool)
    judged[likes] = True
    judged[dislikes] = True
    weak = cand_rows[~judged[cand_rows]]
    if len(likes):
        positive, negative = likes, np.concatenate([dislikes, weak])
        pos_w = np.ones(len(likes))
        neg_w = np.concatenate([np.ones(len(dislikes)), np.full(len(weak), settings.weak_weight)])
    else:
        positive, negative = weak, dislikes
        pos_w, neg_w = np.full(len(weak), settings.weak_weight), np.ones(len(dislikes))
    if not len(positive) or not len(negative):
        return np.zeros(len(cand_rows))
    n = len(positive) + len(negative)
    weight = np.concatenate([pos_w * (n / (2 * pos_w.sum())), neg_w * (n / (2 * neg_w.sum()))])
    y = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    model = LinearSVC(C=settings.c, tol=1e-4, max_iter=1_000, random_state=0, dual=True)
    with warnings.catch_warnings():  # not converged in max_iter: still a usable direction
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(matrix[np.concatenate([positive, negative])], y, sample_weight=weight)
    coef = np.asarray(model.coef_, dtype=np.float64).ravel()
    return np.asarray(matrix[cand_rows] @ coef, dtype=np.float64) + float(model.intercept_[0])


def _strength(
    matrix: sp.csr_matrix,
    cand_rows: _I,
    likes: _I,
    dislikes: _I,
    settings: LearnSettings,
) -> _F:
    """``s`` per candidate: the model's decision value on the scale of the unjudged
    candidates' (0 at their median, 1 at their ``quantile``, -1 at their ``1 - quantile``:
    judged candidates, trained on, sit on the margin), clipped to [-1, 1]; no positive side
    without likes, no negative side without dislikes."""
    d = _decision(matrix, cand_rows, likes, dislikes, settings)
    unjudged = d[~np.isin(cand_rows, np.concatenate([likes, dislikes]))]
    if not len(unjudged):
        return np.zeros(len(d))
    centre = float(np.median(unjudged))
    s = np.zeros(len(d))
    if len(likes):
        top = float(np.quantile(unjudged, settings.quantile)) - centre
        if top > 0:
            s = np.where(d > centre, (d - centre) / top, s)
    if len(dislikes):
        bottom = centre - float(np.quantile(unjudged, 1.0 - settings.quantile))
        if bottom > 0:
            s = np.where(d < centre, (d - centre) / bottom, s)
    return np.clip(s, -1.0, 1.0)


def _adjust(
    matrix: sp.csr_matrix,
    cand_rows: _I,
    cand_ids: Sequence[int],
    papers: Sequence[Paper],
    likes: _I,
    dislikes: _I,
    settings: LearnSettings,
) -> Adjustments | None:
    s = _strength(matrix, cand_rows, likes, dislikes, settings)
    chosen = np.flatnonzero(np.abs(s) >= settings.floor)
    if not len(chosen):
        return None
    contrib = settings.beta * s[chosen]
    labels: dict[int, str] = {}
    scores: dict[int, float] = {}
    for group, mask, prefix in (
        (likes, contrib > 0, LIKE_LABEL),
        (dislikes, contrib < 0, DISLIKE_LABEL),
    ):
        idx = np.flatnonzero(mask)
        if not len(idx) or not len(group):
            continue
        # The label names the judged paper most similar (cosine) to the candidate.
        sim = (matrix[cand_rows[chosen[idx]]] @ matrix[group].T).toarray()
        nearest = np.argmax(sim, axis=1).tolist()
        shown = [f"{prefix}: {shorten(papers[r].title)}" for r in group.tolist()]
        for i, k in zip(idx.tolist(), nearest, strict=True):
            pid = cand_ids[int(chosen[i])]
            scores[pid] = float(contrib[i])
            labels[pid] = shown[k]
    return Adjustments(scores=scores, labels=labels) if scores else None


def shorten(title: str, limit: int = LABEL_TITLE_CHARS) -> str:
    """``title`` cut at a word to at most ``limit`` characters, ending in "…" when cut."""
    title = " ".join(title.split())
    if len(title) <= limit:
        return title
    cut = title[: limit - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:-") + "…"
