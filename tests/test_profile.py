"""The profile syntax: every feature, every error message, and the round trip."""

from __future__ import annotations

import pytest

from newsletter.domain import Profile, ProfileTerm
from newsletter.errors import ProfileError
from newsletter.profile import format_profile, parse_profile

WHO = "subscriber alice@example.org"


def test_words_separated_by_commas_and_whitespace() -> None:
    profile = parse_profile("speech, diffusion transformer")
    assert profile == Profile(
        (
            ProfileTerm("speech", ("speech",)),
            ProfileTerm("diffusion", ("diffus",)),
            ProfileTerm("transformer", ("transform",)),
        )
    )
    assert parse_profile(" speech,,diffusion\n\ttransformer ,") == profile


def test_quoted_phrase_is_one_term() -> None:
    (t,) = parse_profile('"Gaussian Splatting"', expand_vocabulary=False).terms
    assert t == ProfileTerm("Gaussian Splatting", ("gaussian", "splat"))
    (t,) = parse_profile('"  padded phrase "').terms
    assert t.text == "padded phrase"


def test_hyphenated_word_is_joined() -> None:
    (t,) = parse_profile("pre-training").terms
    assert t == ProfileTerm("pre-training", ("pretrain",))


def test_weights() -> None:
    a, b, c, d = parse_profile('speech^2 "a phrase"^1.5 x^.5 y^1e1').terms
    assert (a.text, a.weight) == ("speech", 2.0)
    assert (b.text, b.stems, b.weight) == ("a phrase", ("a", "phrase"), 1.5)
    assert c.weight == 0.5
    assert d.weight == 10.0


def test_exclusions() -> None:
    profile = parse_profile('speech -survey -"position paper"^2')
    assert [t.text for t in profile.positive] == ["speech"]
    assert profile.exclusions == (
        ProfileTerm("survey", ("survey",), exclude=True),
        ProfileTerm("position paper", ("posit", "paper"), weight=2.0, exclude=True),
    )


def test_title_only() -> None:
    a, b, c = parse_profile(
        'title:llm title:"diffusion model"^2 -title:survey', expand_vocabulary=False
    ).terms
    assert a == ProfileTerm("llm", ("llm",), title_only=True)
    assert b == ProfileTerm("diffusion model", ("diffus", "model"), 2.0, title_only=True)
    assert c == ProfileTerm("survey", ("survey",), title_only=True, exclude=True)
    assert parse_profile("Title:llm").terms[0].title_only


def test_latex_in_terms() -> None:
    # "^" starts a weight, so a term carrying LaTeX markup is quoted; E2GAN matches it too.
    a, b = parse_profile('"E$^{2}$GAN" e2gan').terms
    assert a.stems == b.stems == ("e2gan",)
    assert format_profile(Profile((a,))) == '"E$^{2}$GAN"'


@pytest.mark.parametrize(
    ("text", "term", "hint"),
    [
        ("speech x^abc", "x^abc", "positive number"),
        ("speech x^0", "x^0", "positive number"),
        ("speech x^-1", "x^-1", "positive number"),
        ("speech x^", "x^", "positive number"),
        ("speech x^inf", "x^inf", "positive number"),
        ('speech "a phrase"^nan', '"a phrase"^nan', "positive number"),
        ("speech ^2", "^2", "no words"),
        ("speech ---", "---", "no words"),
        ("speech -", "-", "no words"),
        ("speech title:", "title:", "no words"),
        ('speech "unclosed phrase', '"unclosed phrase', "unclosed quote"),
        ('speech ""', '""', "empty phrase"),
        ('speech -title:"  "', '-title:"  "', "empty phrase"),
        ('speech a"b"', '"b"', "separate terms"),
    ],
)
def test_errors_name_who_and_term(text: str, term: str, hint: str) -> None:
    with pytest.raises(ProfileError) as err:
        parse_profile(text, who=WHO)
    message = str(err.value)
    assert message.startswith(WHO + ":")
    assert repr(term) in message
    assert hint in message


@pytest.mark.parametrize("text", ["", "   ", " , ,\n"])
def test_empty_profile_is_an_error(text: str) -> None:
    with pytest.raises(ProfileError, match="^subscriber alice@example.org: the profile is empty"):
        parse_profile(text, who=WHO)


def test_only_exclusions_is_an_error_naming_them() -> None:
    with pytest.raises(ProfileError) as err:
        parse_profile('-survey -title:"position paper"', who=WHO)
    message = str(err.value)
    assert message.startswith(WHO + ":")
    assert "nothing to match" in message
    assert '-survey, -title:"position paper"' in message


def test_default_who() -> None:
    with pytest.raises(ProfileError, match="^profile: "):
        parse_profile("")


@pytest.mark.parametrize(
    "text",
    [
        "speech, diffusion transformer",
        '"gaussian splatting"^2 -survey title:llm -title:"position paper"^1.5',
        "pre-training^0.5, x^0.1, y^3, z^1.0000001",
        'title:"-x" "title:y"^2 "a,b" "c^d"',
    ],
)
def test_round_trip(text: str) -> None:
    profile = parse_profile(text)
    formatted = format_profile(profile)
    assert parse_profile(formatted) == profile
    assert format_profile(parse_profile(formatted)) == formatted


def test_format_profile_output() -> None:
    profile = parse_profile('speech^2,  "gaussian splatting" -title:survey^1.5 title:llm')
    assert format_profile(profile) == (
        'speech^2, "gaussian splatting", -title:survey^1.5, title:llm'
    )
