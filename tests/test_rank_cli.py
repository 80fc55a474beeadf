"""`newsletter rank`: trying a profile on the stored papers, with exact orderings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import cli
from tests.conftest import ROOT, SEEDS


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> CliRunner:
    work = tmp_path_factory.mktemp("rank")
    env = {
        "NEWSLETTER_CONFIG": str(ROOT / "config" / "newsletter.toml"),
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{work / 'db.sqlite'}",
        "NEWSLETTER_OUTBOX_DIR": str(work / "outbox"),
        "NEWSLETTER_FEEDS_DIR": str(work / "feeds"),
    }
    runner = CliRunner(env=env)
    assert runner.invoke(cli, ["ingest", str(SEEDS)]).exit_code == 0
    return runner


def _ranked(runner: CliRunner, *args: str) -> list[dict[str, object]]:
    result = runner.invoke(cli, ["rank", *args, "--json"])
    assert result.exit_code == 0, result.output
    data: list[dict[str, object]] = json.loads(result.output)
    return data


def test_gaussian_splatting_phrase_exact(runner: CliRunner) -> None:
    ranked = _ranked(runner, "--profile", '"gaussian splatting"')
    assert [(d["title"], d["score"]) for d in ranked] == [
        (
            "SOUS VIDE: Cooking Visual Drone Navigation Policies in a Gaussian Splatting Vacuum",
            14.9985,
        ),
        (
            "Real-time Photorealistic Dynamic Scene Representation and Rendering with 4D Gaussian "
            "Splatting",
            9.5543,
        ),
    ]
    assert ranked[0]["reasons"] == [
        {"term": "gaussian splatting", "where": "title", "contribution": 9.5543},
        {"term": "gaussian splatting", "where": "abstract", "contribution": 5.4442},
    ]


def test_title_only_weight_and_excluded_phrase_exact(runner: CliRunner) -> None:
    profile = 'title:pretraining^2, contrastive, -"vision-language"'
    ranked = _ranked(runner, "--profile", profile, "--limit", "6")
    assert [d["title"] for d in ranked] == [
        "Efficient Visual Pretraining with Contrastive Detection",
        "Contrastive Learning for Task-Independent SpeechLLM-Pretraining",
        "Aligning Pretraining for Detection via Object-Level Contrastive Learning",
        "ContraBERT: Enhancing Code Pre-trained Models via Contrastive Learning",
        "GrowCLIP: Data-aware Automatic Model Growing for Large-scale Contrastive "
        "Language-Image Pre-training",
        "Self-Supervised Pre-Training with Contrastive and Masked Autoencoder Methods for "
        "Dealing with Small Datasets in Deep Learning for Medical Imaging",
    ]
    # title-only: "pretraining" never counts in the abstract.
    assert all(
        r["where"] == "title"
        for d in ranked
        for r in d["reasons"]  # type: ignore[attr-defined]
        if r["term"] == "pretraining"
    )
    # Without the exclusion, a Vision-Language paper would rank fifth.
    unexcluded = _ranked(runner, "--profile", "title:pretraining^2, contrastive", "--limit", "5")
    assert unexcluded[4]["title"] == (
        "CTP: Towards Vision-Language Continual Pretraining via Compatible Momentum Contrast "
        "and Topology Preservation"
    )
    full = _ranked(runner, "--profile", profile)
    assert not [d for d in full if "vision-language" in str(d["title"]).lower()]


def test_whole_words_only(runner: CliRunner) -> None:
    # "rag" appears once, as "RAG"; "leverage" (in many abstracts) must not match. The other
    # paper says "retrieval-augmented generation", the vocabulary's expansion of RAG.
    ranked = _ranked(runner, "--profile", "rag")
    assert [d["title"] for d in ranked] == [
        "End-to-End Training of Neural Retrievers for Open-Domain Question Answering",
        "Synthetic continued pretraining",
    ]
    reasons = ranked[1]["reasons"]
    assert isinstance(reasons, list)
    assert [r["term"] for r in reasons] == ["rag via retrieval-augmented generation"]


def test_text_output_and_limit(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["rank", "--profile", '"gaussian splatting"', "--limit", "1"])
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "  1.   15.00  SOUS VIDE: Cooking Visual Drone Navigation Policies in a Gaussian "
        "Splatting Vacuum",
        "              gaussian splatting in title +9.55, gaussian splatting in abstract +5.44",
    ]


def test_no_match_and_bad_profile(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["rank", "--profile", "zzzqqq"])
    assert result.output == "no stored paper matches 'zzzqqq' (380 papers stored)\n"
    bad = runner.invoke(cli, ["rank", "--profile", "speech^abc"])
    assert bad.exit_code != 0
    assert "--profile: " in str(bad.exception) and "speech^abc" in str(bad.exception)
