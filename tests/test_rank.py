"""Ranking on the real seed digests: matching as a researcher expects, BM25 order, selection."""

from __future__ import annotations

import json
import math
import re
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

import pytest

from newsletter.analysis import analyze_query_term, highlight_spans
from newsletter.domain import MatchField, Paper, Profile, ProfileTerm
from newsletter.profile import parse_profile
from newsletter.rank import RankRequest, RankSettings, rank_one, rank_papers
from newsletter.store import rows
from tests.factories import FIRST_SEEN, make_paper

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
T0 = FIRST_SEEN  # make_paper's first_seen_at
_BOILERPLATE = {
    "new",
    "Get trending papers in your email inbox!",
    "Get trending papers in your email inbox once a day!",
    "Subscribe",
    "Daily Papers",
    "byAK and the research community",
    "·",
}
# Page dates ("Mar 12") and, in file 004, per-paper dates with an optional upvote count.
_DATE_LINE = re.compile(r"[A-Z][a-z]{2} \d{1,2}(?:, \d{4})?(?: \d+)?")
_AUTHORS_LINE = re.compile(r"• \d+ authors?")


@lru_cache(maxsize=1)
def seed_papers() -> tuple[Paper, ...]:
    """The 380 distinct seed papers (title/abstract pairs), ids in order of first appearance."""
    seen: dict[str, str] = {}
    for path in sorted(SEEDS.glob("*.txt")):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        kept = [
            line
            for line in lines
            if line
            and line not in _BOILERPLATE
            and not _DATE_LINE.fullmatch(line)
            and not _AUTHORS_LINE.fullmatch(line)
        ]
        assert len(kept) % 2 == 0, path
        for title, abstract in zip(kept[::2], kept[1::2], strict=True):
            title = title.removeprefix("Subscribe")
            seen.setdefault(title, abstract)
    return tuple(
        make_paper(i + 1, title, abstract) for i, (title, abstract) in enumerate(seen.items())
    )


def titles(profile: str, *, expand: bool = True, **kw: float | int | None) -> list[str]:
    """Titles ranked for ``profile``; ``expand=False``: without the vocabulary's expansions
    (tests of matching itself)."""
    parsed = parse_profile(profile, expand_vocabulary=expand)
    return [s.paper.title for s in rank_one(seed_papers(), parsed, **kw)]  # type: ignore[arg-type]


def term(text: str, **kw: bool | float) -> ProfileTerm:
    return ProfileTerm(text, analyze_query_term(text), **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- corpus


def test_seed_corpus_has_380_distinct_papers() -> None:
    papers = seed_papers()
    assert len(papers) == 380
    assert papers[0].title.startswith("T-Stitch: Accelerating Sampling")
    assert any(p.title.startswith("Deep Clustering via Joint Convolutional") for p in papers)


# --------------------------------------------------------------------------- analysis


def test_analyze_query_term() -> None:
    assert analyze_query_term("pre-training") == ("pretrain",)
    assert analyze_query_term("Pretrained") == ("pretrain",)
    assert analyze_query_term("Gaussian Splatting") == ("gaussian", "splat")
    assert analyze_query_term("Transformers") == analyze_query_term("transformer")
    assert analyze_query_term("E$^{2}$GAN") == ("e2gan",)
    assert analyze_query_term("coarse-to-fine") == ("coarsetofin",)
    assert analyze_query_term("---") == ()


def test_pretraining_matches_every_hyphen_space_and_joined_form_in_titles() -> None:
    got = set(titles("title:pretraining"))
    expected = {p.title for p in seed_papers() if re.search(r"(?i)\bpre-?train", p.title)}
    assert len(expected) > 60
    assert got == expected
    assert "Integrally Pre-Trained Transformer Pyramid Networks" in got
    assert "Pre-training under infinite compute" in got
    assert "Synthetic continued pretraining" in got
    assert (
        "CorpusBrain: Pre-train a Generative Retrieval Model for Knowledge-Intensive "
        "Language Tasks" in got
    )


def test_hyphen_space_joined_forms_are_equal_both_ways() -> None:
    papers = [
        make_paper(1, "Pre-training at scale"),
        make_paper(2, "Pre training at scale"),
        make_paper(3, "Pretraining at scale"),
        make_paper(4, "Training at scale"),
    ]
    for query in ("pretraining", "pre-training", '"pre training"'):
        got = sorted(s.paper.id for s in rank_one(papers, parse_profile(f"title:{query}")))
        assert got == [1, 2, 3], query


def test_gaussian_splatting_phrase_on_seeds() -> None:
    assert titles('"gaussian splatting"') == [
        "SOUS VIDE: Cooking Visual Drone Navigation Policies in a Gaussian Splatting Vacuum",
        "Real-time Photorealistic Dynamic Scene Representation and Rendering with 4D Gaussian "
        "Splatting",
    ]
    # AV-DiT's abstract mentions "Gaussian noises" only: the word matches, the phrase does not.
    av_dit = (
        "AV-DiT: Efficient Audio-Visual Diffusion Transformer for Joint Audio and Video Generation"
    )
    assert av_dit in titles("gaussian")
    assert av_dit not in titles('"gaussian splatting"')


def test_a_two_word_phrase_matches_in_a_window_an_exact_one_only_as_written() -> None:
    papers = [
        make_paper(1, "Denoising", "We add Gaussian noise before splatting the points."),
        make_paper(2, "Fast Gaussian Splatting", ""),
        make_paper(3, "Splatting, Gaussian", ""),
        make_paper(4, "Gaussian", "A Gaussian and a kernel for fast splatting."),
        make_paper(5, "High-quality data", ""),
        make_paper(6, "Data quality", ""),
        make_paper(7, "Data of very high quality", ""),
    ]

    def ids(profile: str) -> list[int]:
        found = rank_one(papers, parse_profile(profile, expand_vocabulary=False))
        return sorted(s.paper.id for s in found)

    # Up to two words between, in either order; not three (paper 4).
    assert ids('"gaussian splatting"') == [1, 2, 3]
    assert ids('exact:"gaussian splatting"') == [2]
    assert ids('"data quality"') == [5, 6]
    assert ids('exact:"data quality"') == [6]
    assert ids("data-quality") == [5, 6]  # a hyphenated pair is two words too


def test_whole_words_only_rag_is_not_leverage() -> None:
    assert titles("rag", expand=False) == [
        "End-to-End Training of Neural Retrievers for Open-Domain Question Answering"
    ]
    leverage = [p for p in seed_papers() if "leverage" in p.abstract.casefold()]
    assert len(leverage) > 20
    without_rag = {p.title for p in leverage if not re.search(r"(?i)\brag\b", p.abstract)}
    assert without_rag.isdisjoint(titles("rag", expand=False))
    assert highlight_spans("we leverage RAG", [term("rag")]) == [(12, 15)]


def test_stemming_transformer_equals_transformers() -> None:
    singular = rank_one(seed_papers(), parse_profile("transformer"))
    plural = rank_one(seed_papers(), parse_profile("Transformers"))
    assert len(singular) == 114
    assert [(s.paper.id, s.score) for s in singular] == [(s.paper.id, s.score) for s in plural]
    assert "Three things everyone should know about Vision Transformers" in titles("transformer")


def test_acronym_plurals_match_their_singular() -> None:
    """Snowball keeps the s of LLMs (no vowel before it): before issue 15, LLM matched 35 seed
    papers and LLMs 66 others. Now both match the union, scored the same."""
    singular = rank_one(seed_papers(), parse_profile("LLM", expand_vocabulary=False))
    assert len(singular) == 74
    for plural in ("LLMs", "llms"):
        found = rank_one(seed_papers(), parse_profile(plural, expand_vocabulary=False))
        assert [(s.paper.id, s.score) for s in found] == [(s.paper.id, s.score) for s in singular]
    assert len(rank_one(seed_papers(), parse_profile("VLMs", expand_vocabulary=False))) == 7
    assert analyze_query_term("GNNs") == analyze_query_term("GNN") == ("gnn",)
    assert analyze_query_term("ViTs") == ("vit",) and analyze_query_term("css") == ("css",)
    assert highlight_spans("Scaling LLMs and an LLM", [term("llm")]) == [(8, 12), (20, 23)]


# --------------------------------------------------------------------------- frozen orders


def test_frozen_order_diffusion_image_generation() -> None:
    # Since issue 15 (coordination): papers with both terms first; DreamOmni and
    # EvolveDirector, "image generation" in the title but no "diffusion", fell out of the top 6.
    assert titles('title:diffusion, "image generation", -video', limit=6) == [
        "Arbitrary-Scale Image Generation and Upsampling using Latent Diffusion Model and "
        "Implicit Neural Decoder",
        "In-Context LoRA for Diffusion Transformers",
        "High-Resolution Image Synthesis with Latent Diffusion Models",
        "CLEAR: Conv-Like Linearization Revs Pre-Trained Diffusion Transformers Up",
        "Discovering Failure Modes of Text-guided Diffusion Models via Adversarial Search",
        "Scaling Diffusion Transformers to 16 Billion Parameters",
    ]


def test_frozen_order_speech_recognition() -> None:
    assert titles('speech, "speech recognition"^2, -survey', limit=5) == [
        "wav2vec: Unsupervised Pre-training for Speech Recognition",
        "A Comprehensive Study of Deep Bidirectional LSTM RNNs for Acoustic Modeling in "
        "Speech Recognition",
        "End-to-end Whispered Speech Recognition with Frequency-weighted Approaches and "
        "Pseudo Whisper Pre-training",
        "Layer-wise Analysis of a Self-supervised Speech Representation Model",
        "BLSP: Bootstrapping Language-Speech Pre-training via Behavior Alignment of "
        "Continuation Writing",
    ]


def test_frozen_order_retrieval_qa() -> None:
    # "Synthetic continued pretraining" says "retrieval-augmented generation": RAG's expansion.
    # "Make Your LLM Fully Utilize the Context" evaluates on NarrativeQA: the model-name rule
    # reads "Narrative QA", and QA is "question answering"'s abbreviation.
    assert titles('retrieval, rag^3, "question answering"', limit=4) == [
        "End-to-End Training of Neural Retrievers for Open-Domain Question Answering",
        "Synthetic continued pretraining",
        "RetroMAE v2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented "
        "Language Models",
        "Make Your LLM Fully Utilize the Context",
    ]


# --------------------------------------------------------------------------- selection


def test_exclusion_removes_a_strong_match() -> None:
    top = "wav2vec: Unsupervised Pre-training for Speech Recognition"
    assert titles('"speech recognition"^3', expand=False)[0] == top
    assert top not in titles('"speech recognition"^3, -wav2vec', expand=False)
    assert top not in titles('"speech recognition"^3, -title:unsupervised', expand=False)
    # A title-only exclusion does not fire on an abstract match.
    assert top in titles('"speech recognition"^3, -title:wsj', expand=False)
    assert "WSJ" in next(p for p in seed_papers() if p.title == top).abstract
    assert top not in titles('"speech recognition"^3, -wsj', expand=False)


def test_title_only_terms_count_only_in_titles() -> None:
    everywhere = rank_one(seed_papers(), parse_profile("gaussian"))
    in_titles = rank_one(seed_papers(), parse_profile("title:gaussian"))
    assert len(everywhere) == 4
    assert [s.paper.title for s in in_titles] == [
        "Real-time Photorealistic Dynamic Scene Representation and Rendering with 4D Gaussian "
        "Splatting",
        "SOUS VIDE: Cooking Visual Drone Navigation Policies in a Gaussian Splatting Vacuum",
    ]
    assert all(r.where == "title" for s in in_titles for r in s.reasons)


def test_title_boost_weighs_title_matches_more() -> None:
    papers = [make_paper(1, "Other", "about speech here"), make_paper(2, "Speech", "other text")]
    got = rank_one(papers, parse_profile("speech"))
    assert [s.paper.id for s in got] == [2, 1]
    flat = rank_one(papers, parse_profile("speech"), settings=RankSettings(title_boost=0.1))
    assert [s.paper.id for s in flat] == [1, 2]


def test_ties_break_by_upvotes_then_recency_then_id() -> None:
    abstract = "a paper about speech"
    papers = [
        make_paper(1, "Speech", abstract, upvotes=None, published=date(2025, 1, 2)),
        make_paper(2, "Speech", abstract, upvotes=5, published=date(2024, 1, 1)),
        make_paper(3, "Speech", abstract, upvotes=5, published=date(2025, 1, 1)),
        make_paper(4, "Speech", abstract, upvotes=0, published=None),
        make_paper(
            5,
            "Speech",
            abstract,
            upvotes=None,
            published=date(2025, 1, 2),
            first_seen_at=T0 + timedelta(hours=1),
        ),
        make_paper(6, "Speech", abstract, upvotes=0, published=None),
        make_paper(7, "Speech speech", abstract, upvotes=0),  # higher score wins over upvotes
    ]
    got = rank_one(papers, parse_profile("speech"))
    assert [s.paper.id for s in got] == [7, 3, 2, 5, 1, 4, 6]
    assert len({s.score for s in got[1:]}) == 1


def test_max_papers_and_min_score() -> None:
    all_ = rank_one(seed_papers(), parse_profile("transformer"))
    scores = [s.score for s in all_]
    assert scores == sorted(scores, reverse=True)
    cut = scores[9]
    got = rank_papers(
        seed_papers(),
        [
            RankRequest(parse_profile("transformer"), max_papers=3, min_score=0.0),
            RankRequest(parse_profile("transformer"), max_papers=100, min_score=cut),
            RankRequest(parse_profile("transformer"), max_papers=0, min_score=0.0),
            RankRequest(parse_profile("transformer"), max_papers=5, min_score=1e9),
        ],
    )
    assert [s.paper.id for s in got[0]] == [s.paper.id for s in all_[:3]]
    assert [s.paper.id for s in got[1]] == [s.paper.id for s in all_ if s.score >= cut]
    assert len(got[1]) >= 10
    assert got[2] == () and got[3] == ()


def test_eligible_filter() -> None:
    all_ = rank_one(seed_papers(), parse_profile("transformer"))
    allowed = frozenset({all_[5].paper.id, all_[2].paper.id, 999_999})
    (got,) = rank_papers(
        seed_papers(), [RankRequest(parse_profile("transformer"), 10, 0.0, eligible=allowed)]
    )
    assert [s.paper.id for s in got] == [all_[2].paper.id, all_[5].paper.id]
    (none,) = rank_papers(
        seed_papers(), [RankRequest(parse_profile("transformer"), 10, 0.0, eligible=frozenset())]
    )
    assert none == ()


def test_reasons_sum_to_score_and_explain_each_term() -> None:
    got = rank_one(seed_papers(), parse_profile('speech, "speech recognition"^2, title:asr'))
    assert len(got) > 10
    for s in got:
        assert math.isclose(sum(r.contribution for r in s.reasons), s.score, rel_tol=1e-9)
        contributions = [r.contribution for r in s.reasons]
        assert contributions == sorted(contributions, reverse=True)
        assert all(r.where in ("title", "abstract") and r.contribution > 0 for r in s.reasons)
        assert not any(r.term == "asr" and r.where == "abstract" for r in s.reasons)
    top = got[0]
    assert {(r.term, r.where) for r in top.reasons} == {
        ("speech recognition", "title"),
        ("speech recognition", "abstract"),
        ("speech", "title"),
        ("speech", "abstract"),
        ("asr via speech recognition", "title"),  # the vocabulary's expansion of title:asr
    }


def test_bm25_value_for_a_single_match() -> None:
    papers = [make_paper(1, "Speech", "x y"), make_paper(2, "Vision", "x y")]
    (s,) = rank_one(papers, parse_profile("speech^2"))
    idf = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))
    bm25 = idf * 1 * (1.2 + 1) / (1 + 1.2 * (1 - 0.75 + 0.75 * 1 / 1))
    assert s.score == pytest.approx(2 * 2.0 * bm25)
    assert s.reasons[0].contribution == pytest.approx(s.score)


def test_rank_papers_with_three_requests_equals_three_separate_calls() -> None:
    profiles = [
        parse_profile('speech, "speech recognition"^2, -survey'),
        parse_profile('title:diffusion, "image generation", -video'),
        parse_profile("transformer, -title:vision, pretraining^0.5"),
    ]
    requests = [RankRequest(p, 7, 1.0) for p in profiles]
    together = rank_papers(seed_papers(), requests)
    apart = [rank_papers(seed_papers(), [r])[0] for r in requests]
    assert [[(s.paper.id, s.reasons) for s in t] for t in together] == [
        [(s.paper.id, s.reasons) for s in a] for a in apart
    ]
    for t, a in zip(together, apart, strict=True):
        assert [s.score for s in t] == pytest.approx([s.score for s in a])
    assert rank_papers(seed_papers(), []) == []
    assert rank_papers([], requests) == [(), (), ()]


def test_rank_one_limit_and_min_score() -> None:
    assert len(titles("transformer", limit=3)) == 3
    assert titles("transformer", min_score=1e9) == []
    assert titles("nonexistentword") == []


# --------------------------------------------------------------------------- highlighting


def test_highlight_spans_on_latex_titles() -> None:
    (e2gan,) = [p for p in seed_papers() if p.id == 106]
    assert e2gan.title.startswith("E$^{2}$GAN")
    spans = highlight_spans(e2gan.title, [term("e2gan"), term("GANs"), term("image-to-image")])
    assert [e2gan.title[a:b] for a, b in spans] == ["E$^{2}$GAN", "GANs", "Image-to-Image"]
    (pacc,) = [p for p in seed_papers() if p.id == 193]
    spans = highlight_spans(pacc.title, [term("PaccMannRL"), term("drug")])
    assert [pacc.title[a:b] for a, b in spans] == ["PaccMann$^{RL}$", "drugs"]


def test_highlight_spans_non_ascii_offsets_in_original_text() -> None:
    text = "Ünïcode Café-Pretraining with ﬁne Ｅｘａｍｐｌｅｓ for RAG, not leverage"
    spans = highlight_spans(
        text, [term("café"), term("pretraining"), term("fine"), term("example"), term("rag")]
    )
    expected = ["Café", "Pretraining", "ﬁne", "Ｅｘａｍｐｌｅｓ", "RAG"]
    assert [text[a:b] for a, b in spans] == expected
    assert spans == [(8, 12), (13, 24), (30, 33), (34, 42), (47, 50)]


def test_highlight_spans_merges_and_skips_exclusions() -> None:
    text = "Gaussian Splatting for gaussian splatting fans"
    spans = highlight_spans(
        text,
        [term("gaussian splatting", exact=True), term("splatting"), term("fans", exclude=True)],
    )
    assert spans == [(0, 18), (23, 41)]
    # A phrase window covers the words between: "Splatting for gaussian" is the phrase too.
    assert highlight_spans(text, [term("gaussian splatting")]) == [(0, 41)]
    assert highlight_spans(text, []) == []
    assert highlight_spans("", [term("x")]) == []


def test_highlight_spans_joined_forms() -> None:
    text = "Pre-training and pre training and pretraining"
    spans = highlight_spans(text, [term("pretraining")])
    assert [text[a:b] for a, b in spans] == ["Pre-training", "pre training", "pretraining"]


def test_profile_with_hand_made_stems_matches_the_stems() -> None:
    profile = Profile((ProfileTerm("anything", ("speech",)),))
    expected = [s.paper.id for s in rank_one(seed_papers(), parse_profile("speech"))]
    assert [s.paper.id for s in rank_one(seed_papers(), profile)] == expected


def test_reasons_say_where_with_match_field_and_store_as_plain_strings() -> None:
    got = rank_one(seed_papers(), parse_profile("speech"))
    wheres = {r.where for s in got for r in s.reasons}
    assert wheres == {MatchField.TITLE, MatchField.ABSTRACT}
    assert all(type(r.where) is MatchField for s in got for r in s.reasons)
    # The store keeps reasons as JSON: a member serializes as its value and reads back as one.
    reasons = got[0].reasons
    stored = json.dumps([[r.term, r.where, r.contribution] for r in reasons])
    assert stored == json.dumps([[r.term, r.where.value, r.contribution] for r in reasons])
    assert rows.reasons(stored) == reasons
