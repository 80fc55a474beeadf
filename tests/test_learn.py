"""Learning from the reader's feedback (issue 15): :mod:`newsletter.learn`'s adjustments, the
ranking they make, ``select_papers`` reading stored judgments (SQLite and, when given,
PostgreSQL) and ``newsletter rank --subscriber``.

The corpus is synthetic and small: three topics of four papers each (audio spectrograms,
molecule graphs, image diffusion), every abstract holding "learning" once, so that the profile
``learning`` gives every paper a small, nearly equal score (0.036-0.042, by abstract length)
and any change of order is the feedback's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from newsletter import learn
from newsletter.cli import cli
from newsletter.config import Settings
from newsletter.domain import (
    Judgment,
    MatchField,
    Paper,
    ParsedPaper,
    Reason,
    ScoredPaper,
    SubscriberSource,
    SubscriberSpec,
)
from newsletter.learn import LearnSettings, feedback_adjustments, shorten
from newsletter.pipeline import select_papers
from newsletter.profile import parse_profile
from newsletter.rank import Adjustments, RankRequest, RankSettings, rank_papers
from newsletter.store import KeyedPaper, Store
from tests.conftest import NOW
from tests.factories import make_paper, open_store, settings_env

TOPICS = {
    "audio": [
        (
            "Audio spectrogram transformers for sound event classification",
            "A transformer over audio spectrogram patches for sound event classification.",
        ),
        (
            "Self-supervised audio spectrogram pretraining",
            "Masked audio spectrogram patches pretrain a transformer for sound events.",
        ),
        (
            "Sound event detection with spectrogram transformers",
            "Detecting sound events in audio spectrogram frames with a transformer.",
        ),
        (
            "Spectrogram augmentation for audio tagging",
            "Audio tagging of sound events improves with spectrogram masking.",
        ),
    ],
    "graph": [
        (
            "Graph neural networks for molecule property prediction",
            "Message passing over molecule graphs predicts chemical properties of atoms.",
        ),
        (
            "Equivariant graph networks for molecular dynamics",
            "Graph networks over atoms and bonds simulate molecule dynamics.",
        ),
        (
            "Pretraining molecule graph encoders",
            "Molecule graphs of atoms and bonds pretrain a graph encoder for chemistry.",
        ),
        (
            "Graph transformers for protein and molecule graphs",
            "Attention over molecule graphs of atoms, bonds and chemical properties.",
        ),
    ],
    "diffusion": [
        (
            "Latent diffusion models for image synthesis",
            "Denoising diffusion in a latent space synthesizes high resolution images.",
        ),
        (
            "Text-to-image diffusion with classifier-free guidance",
            "Guidance steers image diffusion samples towards the text prompt.",
        ),
        (
            "Fast sampling of image diffusion models",
            "Fewer denoising steps sample diffusion images at the same quality.",
        ),
        (
            "Diffusion transformers for image generation",
            "A transformer denoiser generates images in latent diffusion.",
        ),
    ],
}


def _corpus() -> list[Paper]:
    """Ids 1-4 audio, 5-8 graph, 9-12 diffusion; the later id is the newer paper."""
    papers: list[Paper] = []
    for title, abstract in (pair for pairs in TOPICS.values() for pair in pairs):
        n = len(papers) + 1
        papers.append(
            make_paper(
                n, title, f"{abstract} Learning.", first_seen_at=NOW - timedelta(hours=24 - n)
            )
        )
    return papers


PAPERS = _corpus()
BY_ID = {p.id: p for p in PAPERS}
#: A paper outside the candidates (already sent, or older than the window): judged only.
OLD_AUDIO = make_paper(
    100,
    "Convolutional networks for audio spectrogram event tagging in noisy recordings of cities",
    "Sound event tagging of audio spectrogram patches.",
)
OLD_LABEL = "like papers you marked: Convolutional networks for audio spectrogram event tagging…"
#: The keyword ranking alone (shorter abstracts first, then the newer paper).
BASELINE = [12, 10, 6, 4, 11, 9, 8, 5, 3, 2, 1, 7]


def _rank(
    candidates: Sequence[Paper], adjust: Adjustments | None, max_papers: int = 12
) -> tuple[ScoredPaper, ...]:
    request = RankRequest(parse_profile("learning"), max_papers, 0.0, adjust=adjust)
    (chosen,) = rank_papers(candidates, [request], RankSettings())
    return chosen


def _ids(ranked: Sequence[ScoredPaper]) -> list[int]:
    return [sp.paper.id for sp in ranked]


def _rounded(adjust: Adjustments) -> dict[int, float]:
    return {k: round(v, 2) for k, v in sorted(adjust.scores.items())}


def test_without_feedback_the_scores_are_small_and_close() -> None:
    ranked = _rank(PAPERS, None)
    assert _ids(ranked) == BASELINE
    assert all(0.03 < sp.score < 0.05 for sp in ranked)


def test_a_like_lifts_the_papers_like_it() -> None:
    adjust = feedback_adjustments(PAPERS, {OLD_AUDIO.id: OLD_AUDIO}, {7: {100: Judgment.LIKE}})
    # The four audio papers first (the closest to the liked one first), then the others in
    # their keyword order; without dislikes nothing is lowered.
    assert _ids(_rank(PAPERS, adjust[7])) == [1, 4, 2, 3, 12, 10, 6, 11, 9, 8, 5, 7]
    assert _rounded(adjust[7]) == {1: 4.0, 2: 2.8, 3: 2.65, 4: 3.53}


def test_a_dislike_lowers_the_papers_like_it() -> None:
    adjust = feedback_adjustments(PAPERS, {}, {7: {9: Judgment.DISLIKE}})
    # The diffusion papers fall below zero (never selected); the others keep their order.
    # Without likes nothing is lifted.
    assert _ids(_rank(PAPERS, adjust[7])) == [6, 4, 8, 5, 3, 2, 1, 7]
    assert _rounded(adjust[7]) == {9: -4.0, 10: -2.0, 11: -3.96, 12: -4.0}


def test_likes_and_dislikes_together_and_the_blend_bounds() -> None:
    adjust = feedback_adjustments(PAPERS, {}, {1: {2: Judgment.LIKE, 6: Judgment.DISLIKE}})[1]
    # The liked paper (a candidate) and its topic first; the disliked topic's papers gone,
    # but for one (7) the model finds no nearer the dislike than a typical paper.
    assert _ids(_rank(PAPERS, adjust)) == [2, 1, 3, 4, 12, 10, 11, 9, 7]
    assert _rounded(adjust) == {1: 4.0, 2: 4.0, 3: 3.66, 4: 2.91, 5: -3.5, 6: -4.0, 8: -4.0}
    beta, floor = LearnSettings().beta, LearnSettings().floor
    assert all(floor * beta <= abs(v) <= beta for v in adjust.scores.values())


def test_feedback_reasons_name_the_most_similar_judged_paper() -> None:
    judgments = {3: {100: Judgment.LIKE, 5: Judgment.LIKE, 10: Judgment.DISLIKE}}
    adjust = feedback_adjustments(PAPERS, {100: OLD_AUDIO}, judgments)[3]
    ranked = {sp.paper.id: sp for sp in _rank(PAPERS, adjust)}
    assert list(ranked) == [5, 1, 8, 4, 6, 3, 2, 7]
    # An audio paper names the liked audio paper (its title cut at a word), a graph paper the
    # liked graph paper; the reason is the adjustment, and the reasons sum to the score.
    audio = ranked[1].reasons
    assert audio[0] == Reason(OLD_LABEL, MatchField.FEEDBACK, adjust.scores[1])  # largest first
    assert [r.where for r in audio[1:]] == [MatchField.ABSTRACT]
    assert ranked[1].score == pytest.approx(sum(r.contribution for r in audio))
    graph = [r.term for r in ranked[8].reasons if r.where is MatchField.FEEDBACK]
    assert graph == [f"like papers you marked: {BY_ID[5].title}"]
    # Lowered papers name the disliked paper.
    lowered = sorted(pid for pid, v in adjust.scores.items() if v < 0)
    assert lowered == [9, 10, 11, 12]
    assert {adjust.labels[pid] for pid in lowered} == {
        f"unlike papers you marked less: {BY_ID[10].title}"
    }


def test_shorten_cuts_at_a_word() -> None:
    assert shorten("Short title") == "Short title"
    assert shorten("one two three four", limit=12) == "one two…"
    assert shorten("  spaced\n  title ") == "spaced title"


def test_no_judgments_no_adjustments_and_the_same_ranking() -> None:
    assert feedback_adjustments(PAPERS, {}, {}) == {}
    assert feedback_adjustments(PAPERS, {}, {1: {}}) == {}
    assert feedback_adjustments(PAPERS, {}, {1: {999: Judgment.LIKE}}) == {}  # unknown paper
    assert feedback_adjustments([], {}, {1: {1: Judgment.LIKE}}) == {}
    assert _rank(PAPERS, None) == _rank(PAPERS, Adjustments({}, {}))


def test_the_model_is_deterministic() -> None:
    judgments = {1: {2: Judgment.LIKE, 6: Judgment.DISLIKE}, 2: {100: Judgment.LIKE}}
    first = feedback_adjustments(PAPERS, {100: OLD_AUDIO}, judgments)
    assert first == feedback_adjustments(PAPERS, {100: OLD_AUDIO}, judgments)
    again = feedback_adjustments(list(reversed(PAPERS)), {100: OLD_AUDIO}, judgments)
    for key in (1, 2):
        assert first[key].labels == again[key].labels
        # The same papers in another order: the same model up to the solver's tolerance.
        assert first[key].scores == pytest.approx(again[key].scores, rel=1e-4)


# ---------------------------------------------------------------------- planning reads judgments


def _store_corpus(store: Store, seen_at: datetime) -> dict[str, int]:
    """The corpus in the store, first seen at ``seen_at`` (ids by title), and the old audio
    paper 30 days earlier (outside the candidate window)."""
    store.record_digest(
        path="old",
        content_hash="old",
        size=1,
        seen_at=seen_at - timedelta(days=30),
        format="t",
        papers=[_keyed(OLD_AUDIO)],
    )
    store.record_digest(
        path="new",
        content_hash="new",
        size=1,
        seen_at=seen_at,
        format="t",
        papers=[_keyed(p) for p in PAPERS],
    )
    return {p.title: p.id for p in store.papers()}


def _keyed(p: Paper) -> KeyedPaper:
    return KeyedPaper(key=p.key, paper=ParsedPaper(title=p.title, abstract=p.abstract))


def _subscriber(store: Store, email: str, profile: str = "learning") -> int:
    sub, _ = store.upsert_subscriber(
        SubscriberSpec(email=email, profile=profile, max_papers=5, min_score=0.0),
        source=SubscriberSource.CLI,
        now=NOW,
    )
    return sub.id


def test_select_papers_applies_stored_judgments(store: Store, monkeypatch) -> None:
    ids = _store_corpus(store, NOW - timedelta(hours=1))
    old = ids[OLD_AUDIO.title]
    fan, plain = _subscriber(store, "fan@example.org"), _subscriber(store, "plain@example.org")
    assert store.record_judgment(fan, old, Judgment.LIKE, NOW)
    subs = store.subscribers_by_id([fan, plain])

    def plan() -> dict[int, tuple[ScoredPaper, ...]]:
        selections = select_papers(
            store, list(subs.values()), NOW, window_days=7, rank_settings=RankSettings()
        )
        return {sid: sel.papers for sid, sel in selections.items()}

    chosen = plan()
    # The fan's issue: the four audio papers, lifted by the like of a paper outside the
    # window (read from the store to train on), then the best of the others: the ranking of
    # the same candidates and judgment done directly.
    stored = store.papers()
    candidates = [p for p in stored if p.id != old]
    judged = {p.id: p for p in stored if p.id == old}
    adjust = feedback_adjustments(candidates, judged, {fan: {old: Judgment.LIKE}})[fan]
    assert chosen[fan] == _rank(candidates, adjust, max_papers=5)
    assert {sp.paper.title for sp in chosen[fan][:4]} == {t for t, _ in TOPICS["audio"]}
    assert all(OLD_LABEL in {r.term for r in sp.reasons} for sp in chosen[fan][:4])
    # Without judgments: the keyword ranking alone, no feedback reason, and no model built.
    assert chosen[plain] == _rank(candidates, None, max_papers=5)
    del subs[fan]

    def no_model(*_: object, **__: object) -> object:
        raise AssertionError("a model was built for subscribers without judgments")

    monkeypatch.setattr(learn, "feedback_adjustments", no_model)
    assert plan()[plain] == chosen[plain]


def test_a_judged_paper_is_no_candidate_for_its_judge(store: Store) -> None:
    """The reader has seen a paper they judged: planning never offers it to them again."""
    _store_corpus(store, NOW - timedelta(hours=1))
    judge, plain = _subscriber(store, "judge@example.org"), _subscriber(store, "plain@example.org")
    subs = store.subscribers_by_id([judge, plain])

    def plan() -> dict[int, list[int]]:
        selections = select_papers(
            store, list(subs.values()), NOW, window_days=7, rank_settings=RankSettings()
        )
        return {sid: [sp.paper.id for sp in sel.papers] for sid, sel in selections.items()}

    before = plan()
    liked, disliked = before[judge][0], before[judge][1]
    assert store.record_judgment(judge, liked, Judgment.LIKE, NOW)
    assert store.record_judgment(judge, disliked, Judgment.DISLIKE, NOW)
    after = plan()
    assert liked not in after[judge] and disliked not in after[judge]
    assert after[plain] == before[plain] and {liked, disliked} <= set(after[plain])


# ---------------------------------------------------------------------- rank --subscriber


@pytest.fixture
def ranked_env(settings: Settings) -> dict[str, str]:
    """The corpus stored a minute ago (the CLI ranks at the wall clock) and Lin (CLI-added,
    profile ``learning``, 5 papers), who liked the old audio paper and disliked a diffusion
    one."""
    store = open_store(settings)
    try:
        ids = _store_corpus(store, datetime.now(UTC) - timedelta(minutes=1))
        lin = _subscriber(store, "lin@example.org")
        assert store.record_judgment(lin, ids[OLD_AUDIO.title], Judgment.LIKE, NOW)
        assert store.record_judgment(lin, ids[TOPICS["diffusion"][0][0]], Judgment.DISLIKE, NOW)
    finally:
        store.close()
    return settings_env(settings)


def test_rank_subscriber_json_ranks_their_next_issue(ranked_env: dict[str, str]) -> None:
    runner = CliRunner(env=ranked_env)
    result = runner.invoke(cli, ["rank", "--subscriber", "lin@example.org", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    audio = [t for t, _ in TOPICS["audio"]]
    assert [(r["rank"], r["title"]) for r in rows] == list(
        enumerate([audio[0], audio[3], audio[1], audio[2], TOPICS["graph"][1][0]], 1)
    )
    store_ids = {r["title"]: r["id"] for r in rows}
    assert all(isinstance(i, int) for i in store_ids.values())
    for row in rows:  # the score is the sum of the reasons, each rounded to 4 places
        assert row["score"] == pytest.approx(sum(x["contribution"] for x in row["reasons"]), 1e-3)
    assert [(x["term"], x["where"]) for x in rows[0]["reasons"]] == [
        (OLD_LABEL, "feedback"),
        ("learning", "abstract"),
    ]
    assert rows[0]["reasons"][0]["contribution"] == pytest.approx(4.0)
    # The keyword ranking's first two (diffusion papers) are lowered out of the five.
    assert [x["where"] for x in rows[4]["reasons"]] == ["abstract"]  # no feedback reason
    # --limit replaces the max papers; the text output shows the feedback reason.
    limited = runner.invoke(cli, ["rank", "--subscriber", "lin@example.org", "--limit", "2"])
    assert limited.exit_code == 0, limited.output
    assert limited.output.count(f"{OLD_LABEL} +") == 2
    assert "  1. " in limited.output and "  3. " not in limited.output


def test_rank_subscriber_errors(ranked_env: dict[str, str]) -> None:
    runner = CliRunner(env=ranked_env)
    unknown = runner.invoke(cli, ["rank", "--subscriber", "nobody@example.org"])
    assert unknown.exit_code == 1 and "no subscriber" in str(unknown.exception)
    both = runner.invoke(cli, ["rank", "--subscriber", "lin@example.org", "--profile", "x"])
    assert both.exit_code == 2
    assert "--profile and --subscriber are mutually exclusive" in both.output
    neither = runner.invoke(cli, ["rank"])
    assert neither.exit_code == 2 and "--subscriber EMAIL" in neither.output
