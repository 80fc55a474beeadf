"""Query expansion from the research vocabulary (``newsletter/data/vocabulary.toml``).

A profile term that is one form of an entry (``LLM``) also matches the entry's other forms
(``large language model``), at :data:`EXPANSION_WEIGHT` times the term's weight: a paper that
says it in full is found, but a term as typed still counts more than a guess at what it
means. The expansions join the typed term's group, so a paper that writes both forms counts
as matching one term of the profile (the ranker's coordination), and the reasons name them:
``LLM via large language model``. Exclusions are not expanded: an exclusion removes papers,
and guessing wider there loses papers the reader wanted.

Forms are compared after the ranker's analysis (case, plurals, hyphen and joined forms), so
``LLMs``, ``llm`` and ``LLM`` are one form, and ``vision-language model`` covers ``vision
language models``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from functools import cache
from importlib.resources import files

from newsletter.analysis import analyze_query_term, variants
from newsletter.domain import ProfileTerm
from newsletter.errors import ConfigError

#: An expansion's weight relative to the term it expands.
EXPANSION_WEIGHT = 0.5


@dataclass(frozen=True)
class Vocabulary:
    """The table: its version, and for each analyzed form the other forms of its entry."""

    version: int
    others: dict[tuple[str, ...], tuple[str, ...]]

    def expansions(self, term: ProfileTerm) -> tuple[ProfileTerm, ...]:
        """The terms ``term`` expands to (none for an exclusion or an unknown term)."""
        if term.exclude or term.via or term.author:
            return ()
        return tuple(
            ProfileTerm(
                form,
                analyze_query_term(form),
                term.weight * EXPANSION_WEIGHT,
                term.title_only,
                False,
                group=term.group,
                via=term.text,
            )
            for form in self.others.get(term.stems, ())
        )


def parse_vocabulary(text: str, source: str = "vocabulary") -> Vocabulary:
    """Read the table; a malformed one is a :class:`ConfigError` naming the entry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    version, entries = data.get("version"), data.get("forms")
    if not isinstance(version, int) or not isinstance(entries, list):
        raise ConfigError(f"{source}: needs an integer `version` and a list `forms`")
    others: dict[tuple[str, ...], list[str]] = {}
    for number, forms in enumerate(entries, start=1):
        if (
            not isinstance(forms, list)
            or len(forms) < 2
            or not all(isinstance(f, str) and analyze_query_term(f) for f in forms)
        ):
            raise ConfigError(f"{source}: entry {number} must list two or more forms")
        analyzed: dict[str, tuple[str, ...]] = {}
        for form in forms:  # forms that match the same text are one form (the first written)
            stems = analyze_query_term(form)
            if not any(
                variants(form, stems, True) & variants(other, other_stems, True)
                for other, other_stems in analyzed.items()
            ):
                analyzed[form] = stems
        for form, stems in analyzed.items():
            if stems in others:
                raise ConfigError(f"{source}: entry {number}: {form!r} is in another entry too")
            seen = {stems}
            mine: list[str] = []
            for other, other_stems in analyzed.items():
                if other_stems not in seen:
                    seen.add(other_stems)
                    mine.append(other)
            others[stems] = mine
    return Vocabulary(version, {k: tuple(v) for k, v in others.items()})


@cache
def vocabulary() -> Vocabulary:
    """The table shipped in the package (read once per process)."""
    source = files("newsletter").joinpath("data/vocabulary.toml")
    return parse_vocabulary(source.read_text(encoding="utf-8"), "newsletter/data/vocabulary.toml")


def expand(terms: tuple[ProfileTerm, ...]) -> tuple[ProfileTerm, ...]:
    """``terms`` followed by the expansions of each (see the module docstring).

    Typed terms that are forms of one entry (``RL^2, "reinforcement learning"``), or the same
    term typed twice (``LLM, LLMs``), are put in one group, each at its own weight, and are not
    added again as expansions of each other: a paper matching both counts as matching one term
    of the profile. An expansion of a term
    in a group (a synonym group, or such a merge) is in that group; an expansion of a term of
    its own has group 0 and names it in ``via`` (the ranker groups them by that).
    """
    table = vocabulary()
    parent = list(range(len(terms)))

    def root(k: int) -> int:
        while parent[k] != k:
            k = parent[k]
        return k

    typed: dict[tuple[tuple[str, ...], bool], int] = {}
    for k, t in enumerate(terms):
        if not t.exclude and not t.via:
            first = typed.setdefault((t.stems, t.title_only), k)
            if first != k:  # the same term typed twice (LLM, LLMs): one term of the profile
                parent[k] = root(first)

    found: list[tuple[int, ProfileTerm]] = []
    for k, term in enumerate(terms):
        for x in table.expansions(term):
            other = typed.get((x.stems, x.title_only))
            if other is None:
                found.append((k, x))
            elif root(other) != root(k):
                parent[max(root(other), root(k))] = min(root(other), root(k))
    if not found and all(parent[k] == k for k in range(len(terms))):
        return terms
    # Each merged set of typed terms gets one group number: the synonym group's if one of
    # them is in one, else a negative number (not written back as a group by format_profile).
    numbers: dict[int, int] = {}
    next_number = -1
    members: dict[int, list[int]] = {}
    for k in range(len(terms)):
        members.setdefault(root(k), []).append(k)
    for r, ks in members.items():
        own = sorted({terms[k].group for k in ks if terms[k].group})
        if own:
            numbers[r] = own[0]
        elif len(ks) > 1:
            numbers[r], next_number = next_number, next_number - 1
        else:
            numbers[r] = 0
    out = [replace(t, group=numbers[root(k)]) for k, t in enumerate(terms)]
    added: set[tuple[tuple[str, ...], bool, object]] = set()
    for k, x in found:
        group = numbers[root(k)]
        x = replace(x, group=group)
        identity = (x.stems, x.title_only, group or x.via)
        if identity not in added:  # once per group
            added.add(identity)
            out.append(x)
    return tuple(out)


__all__ = ["EXPANSION_WEIGHT", "Vocabulary", "expand", "parse_vocabulary", "vocabulary"]
