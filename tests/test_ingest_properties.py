"""Property tests: whatever the bytes, ingest parsers fail only with ParseError.

A parser that raises anything else stops the run (ingest_file catches ParseError only), so
"raises nothing but ParseError" is the property that keeps one bad file from stopping the
others. When parsing succeeds every paper has a title; when it fails the reason is one line
that names the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from newsletter.domain import ParsedDigest
from newsletter.errors import ParseError
from newsletter.ingest import arxiv_feed, hf_json, hf_text, parse_bytes

TODAY = date(2026, 11, 23)
NAME = "inbox/file.txt"
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PARSERS: dict[str, Callable[..., ParsedDigest]] = {
    "hf_text": hf_text.parse,
    "hf_json": hf_json.parse,
    "arxiv_feed": arxiv_feed.parse,
}


def _check(parse: Callable[[], ParsedDigest]) -> None:
    try:
        digest = parse()
    except ParseError as exc:
        message = str(exc)
        assert message.startswith(NAME), message
        assert "\n" not in message, message
        return
    assert digest.papers
    assert all(p.title.strip() for p in digest.papers)


# Text that looks enough like each format to get past the first checks.
LINES = st.sampled_from(
    [
        "",
        "new",
        "Subscribe",
        "SubscribeA Title",
        "Daily Papers",
        "Mar 12",
        "Dec 30",
        "Feb 29",
        "Sep 5, 2024 4",
        "Jan 3 17",
        "  • 3 authors",
        "• 1 author",
        "·",
        "A Title",
        "An abstract sentence.",
        "x" * 401,
        "<html>",
        "<rss>",
        "{",
        "[",
    ]
)
TEXTISH = st.one_of(
    st.text(),
    st.lists(st.one_of(LINES, st.text(max_size=30)), max_size=25).map("\n".join),
)
FEEDISH = st.one_of(
    st.text(),
    st.builds(
        lambda root, body: f"<{root}>{body}",
        st.sampled_from(
            ['feed xmlns="http://www.w3.org/2005/Atom"', 'rss version="2.0"', "rdf:RDF"]
        ),
        st.lists(
            st.sampled_from(
                [
                    "<entry>",
                    "</entry>",
                    "<item>",
                    "</item>",
                    "<channel>",
                    "<title>T</title>",
                    "<title></title>",
                    "<id>http://arxiv.org/abs/2509.04664v1</id>",
                    "<guid>oai:arXiv.org:hep-th/9901001v2</guid>",
                    "<link>https://arxiv.org/abs/2509.0</link>",
                    "<summary>arXiv:1 Announce Type: new Abstract: S</summary>",
                    "<author><name>A, B and C</name></author>",
                    "<dc:creator>,,</dc:creator>",
                    "<published>0000-13-45T99:99:99Z</published>",
                    "<updated>2025-02-29T00:00:00Z</updated>",
                    "<pubDate>Fri, 31 Feb 2025 00:00:00 -0400</pubDate>",
                    "&amp;",
                    "&bogus;",
                    "<![CDATA[",
                ]
            ),
            max_size=15,
        ).map("".join),
    ),
)


@PROPERTY
@given(data=st.binary(max_size=2048))
@example(data=b"")
@example(data=b"\xff\xfe" + "A Title\n\nAbstract.\n".encode("utf-16-le"))
@example(data=b"\xfe\xff\x00")  # a UTF-16 BOM and half a character
@example(data=b"\x81\x8d\x8f\x90\x9d\n\nabc\n")  # bytes cp1252 does not define
def test_parse_bytes_on_arbitrary_bytes(data: bytes) -> None:
    _check(lambda: parse_bytes(data, name=NAME, today=TODAY))


@PROPERTY
@given(text=TEXTISH)
@example(text="\ufeff")
@example(text="A Title\r\rAbstract\r")
def test_parse_bytes_on_arbitrary_utf8_text(text: str) -> None:
    _check(lambda: parse_bytes(text.encode("utf-8"), name=NAME, today=TODAY))


@pytest.mark.parametrize("parser", sorted(PARSERS))
@PROPERTY
@given(text=st.one_of(TEXTISH, FEEDISH))
def test_each_parser_on_arbitrary_text(parser: str, text: str) -> None:
    _check(lambda: PARSERS[parser](text, name=NAME, today=TODAY))


KEYS = st.sampled_from(
    ["paper", "title", "summary", "authors", "id", "publishedAt", "upvotes", "name", "papers"]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        ["2509.04664v2", "hep-th/9901001", "2025-09-04T17:59:51.000Z", "2025-02-30", " ", "Z"]
    ),
)
JSONISH = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(KEYS, st.text(max_size=5)), children, max_size=6),
    ),
    max_leaves=30,
)


@PROPERTY
@given(value=JSONISH)
@example(value=[{"paper": {"title": "T", "upvotes": -1.5}, "upvotes": 3}])
@example(value={"papers": [{"paper": "not a dict", "title": " "}]})
@example(value=[{"title": "T", "authors": [{"name": 1}, None, "A"], "publishedAt": "2025-9-4"}])
def test_hf_json_on_json_shaped_values(value: Any) -> None:
    _check(lambda: hf_json.parse(json.dumps(value), name=NAME, today=TODAY))


@pytest.mark.parametrize(
    "text",
    [
        '[{"title": "T", "upvotes": Infinity}]',
        '[{"paper": {"title": "T", "upvotes": Infinity}, "upvotes": 1}]',
        "[" * 100_000,
        "[" + "1" * 5000 + "]",
    ],
    ids=["upvotes-infinity", "paper-upvotes-infinity", "nested-100000", "int-5000-digits"],
)
def test_hf_json_hostile_json_raises_only_parse_error(text: str) -> None:
    _check(lambda: hf_json.parse(text, name=NAME, today=TODAY))


def test_hf_text_huge_counts_raise_only_parse_error() -> None:
    text = "T\n\nAbstract.\n\n  • 3 authors\n·\nMar 1 " + "9" * 5000 + "\n"
    _check(lambda: hf_text.parse(text, name=NAME, today=TODAY))


@pytest.mark.parametrize(
    "text", ["http://127.0.0.1:9/feed.atom", "/etc/hostname", "file:///etc/hostname"]
)
def test_a_feed_parser_never_fetches_or_opens_what_the_text_names(text: str) -> None:
    from newsletter.ingest import arxiv_feed

    with pytest.raises(ParseError, match="no paper entries|not a well-formed feed"):
        arxiv_feed.parse(text, name=NAME, today=TODAY)
