"""Profiles: what a subscriber cares about, in a one-line syntax they can type in a form.

Syntax
------

A profile is a list of terms separated by commas and/or white space::

    speech, "diffusion transformer"^2, title:llm -survey -title:"position paper"

* ``word`` -- a word. ``speech, diffusion transformer`` is three terms.
* ``"quoted phrase"`` -- one term that matches only as a contiguous phrase.
* ``term^2``, ``"a phrase"^1.5`` -- a weight (a positive number; default 1). A paper's score is
  the weighted sum of its matches, so a weight of 2 counts that term twice as much.
* ``-term``, ``-"a phrase"`` -- an exclusion: a paper matching it is never selected, however
  well it matches the other terms.
* ``title:term``, ``title:"a phrase"^2`` -- the term counts only when it matches in the title.
  ``-title:term`` excludes only papers with the term in their title.

Matching ignores case and LaTeX markup (a term written with ``^`` in it must be quoted, as
``"E$^{2}$GAN"``; ``e2gan`` matches it too), stems words (``transformer`` matches ``transformers``),
matches whole words only (``rag`` does not match ``leverage``), and treats hyphenated, spaced and
joined forms alike (``pretraining`` matches ``pre-training`` and ``pre training``).

A profile needs at least one term that is not an exclusion. An unclosed quote, an empty phrase
``""``, a bad weight (``^abc``, ``^0``, ``^-1``, above :data:`MAX_WEIGHT`) or a term with no
letters or digits (``---``) is an error whose message names the term.

What people bring from search engines is refused with a hint rather than read as words, because
read as words it silently matches something else: an unknown field prefix (``titel:speech``,
``abstract:x``: a word, a colon and a term right after it) and the bare operators ``AND``,
``OR`` and ``NOT`` (upper case, unquoted). Quoted, both are ordinary text (``"re:invent"``).
A profile longer than :data:`~newsletter.limits.MAX_PROFILE_CHARS` characters, or holding a
control character other than tabs and line breaks, is refused before it is parsed.
"""

from __future__ import annotations

import logging
import re

from newsletter.analysis import analyze_query_term
from newsletter.domain import Profile, ProfileTerm
from newsletter.errors import ProfileError
from newsletter.limits import MAX_PROFILE_CHARS, unstorable_character
from newsletter.vocabulary import expand

log = logging.getLogger(__name__)

__all__ = ["FIELD_PREFIXES", "MAX_WEIGHT", "format_profile", "parse_profile"]

#: The field prefixes a term may carry.
FIELD_PREFIXES = ("title:", "exact:", "author:")
#: The largest weight: enough to make one term outweigh any other, small enough that a score
#: (a sum of weighted BM25 values) stays a finite number in every output and column.
MAX_WEIGHT = 1000.0

_SEPARATORS = " \t\r\n\f\v,"
_WEIGHT = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_BARE_STOP = re.compile(r"[\s,\"^]")
_GROUP_WORD_STOP = re.compile(r"[\s,\"^|()]")
_EXAMPLE = 'e.g. speech, "diffusion transformer"^2, -survey'
_TOKEN = re.compile(r"[^\s,]*")
# A word, a colon and a term right after it: written as a field prefix (``titel:speech``).
# ``note: speech`` and ``http://…`` are not: a separator or a non-word character follows.
_PREFIX_LIKE = re.compile(r"([^\W\d_]+:)(?=[\w\"])")
# Search-engine operators, upper case as search engines write them, and what to do instead.
_OPERATORS = {
    "AND": "every term adds to the score on its own; for words that must appear together "
    'use a phrase in quotes ("speech recognition")',
    "OR": "terms are alternatives already: separate them with a comma or a space",
    "NOT": "to leave out papers with a term, put - before it (-survey)",
}


def parse_profile(
    text: str, *, who: str = "profile", strict: bool = True, expand_vocabulary: bool = True
) -> Profile:
    """Parse the profile syntax (see the module docstring) into analyzed terms.

    ``strict`` refuses what reads like a search-engine habit (an unknown ``field:`` prefix, a
    bare ``AND``/``OR``/``NOT``): every entry point checks new profiles strictly. Planning
    reads stored profiles with ``strict=False``, so a profile saved before those rules existed
    keeps matching as it always did (the words as written) instead of silencing a reader.

    ``who`` names the profile's owner in error messages (``"subscriber alice@example.org"``),
    because the operator reading the log needs to know whose profile to fix.
    """
    if len(text) > MAX_PROFILE_CHARS:
        raise ProfileError(
            f"{who}: the profile is {len(text):,} characters long; at most "
            f"{MAX_PROFILE_CHARS:,} are allowed: keep the terms that matter most."
        )
    problem = unstorable_character(text)
    if problem:
        raise ProfileError(f"{who}: the profile {problem}.")
    terms: list[ProfileTerm] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SEPARATORS:
            i += 1
        if i >= n:
            break
        start = i
        exclude = text[i] == "-"
        if exclude:
            i += 1
        title_only = text[i : i + 6].casefold() == "title:"
        if title_only:
            i += 6
        author = not title_only and text[i : i + 7].casefold() == "author:"
        if author:
            i += 7
        exact = (
            not author
            and text[i : i + 6].casefold() == "exact:"
            and (strict or text[i + 6 : i + 7] == '"')
        )
        if exact:
            i += 6
            if i >= n or text[i] != '"':
                raise ProfileError(
                    f'{who}: exact: goes before a quoted phrase, as in exact:"data quality" '
                    f"(in {text[start : i + 20]!r})."
                )
        prefix = _PREFIX_LIKE.match(text, i)
        if prefix and strict:
            raise ProfileError(_unknown_prefix(text, start, prefix, who))
        bodies: list[tuple[str, bool]] = []  # (text, quoted): one, or a synonym group's
        if i < n and text[i] == "(" and not exact and not author:
            try:
                i = _read_group(text, i, start, who, bodies)
            except ProfileError:
                if strict:
                    raise
                # A profile stored before groups existed: "(GNN)" was the word GNN, and
                # planning reads stored profiles as they always matched.
                bodies = []
        if not bodies:
            body, quoted, i = _read_body(text, i, start, who)
            bodies.append((body, quoted))
        weight = 1.0
        if i < n and text[i] == "^":
            m = _TOKEN.match(text, i + 1)
            raw = m.group() if m else ""
            i += 1 + len(raw)
            weight = _parse_weight(raw, text[start:i], who)
        written = text[start:i]
        for body, quoted in bodies:
            if strict and not quoted and body in _OPERATORS:
                raise ProfileError(
                    f"{who}: {written!r} is not an operator in a profile: {_OPERATORS[body]}; "
                    f'to match the word itself, quote it: "{body}".'
                )
        if i < n and text[i] not in _SEPARATORS:
            m = _TOKEN.match(text, i)
            junk = m.group() if m else text[i:]
            raise ProfileError(
                f"{who}: unexpected {junk!r} right after the term {written!r}: "
                "separate terms with a comma or a space."
            )
        group = len(terms) + 1 if len(bodies) > 1 else 0  # a synonym group, or a term alone
        for body, _ in bodies:
            stems = analyze_query_term(body) if body else ()
            if not stems:
                raise ProfileError(
                    f"{who}: the term {written!r} has no words to match: "
                    "use letters or digits (a weight goes after a word, as in speech^2)."
                )
            terms.append(
                ProfileTerm(
                    body,
                    stems,
                    weight,
                    title_only,
                    exclude,
                    group=group,
                    exact=exact,
                    author=author,
                )
            )
    if not terms:
        raise ProfileError(f"{who}: the profile is empty: nothing to match. Add terms, {_EXAMPLE}.")
    if all(t.exclude for t in terms):
        shown = ", ".join(_format_term(t) for t in terms)
        raise ProfileError(
            f"{who}: the profile has only exclusions ({shown}): nothing to match. "
            f"Add at least one term without '-', {_EXAMPLE}."
        )
    log.debug("parsed %s: %d terms", who, len(terms))
    return Profile(expand(tuple(terms)) if expand_vocabulary else tuple(terms))


def _read_body(text: str, i: int, start: int, who: str) -> tuple[str, bool, int]:
    """A word or a quoted phrase at ``i``: (its text, quoted, the position after it)."""
    n = len(text)
    if i < n and text[i] == '"':
        close = text.find('"', i + 1)
        if close < 0:
            raise ProfileError(
                f"{who}: unclosed quote in {text[start:]!r}: "
                'close the phrase with a second " (e.g. "gaussian splatting").'
            )
        phrase = text[i + 1 : close]
        if not phrase.strip():
            raise ProfileError(
                f"{who}: empty phrase {text[start : close + 1]!r}: put words between the "
                "quotes or remove them."
            )
        return phrase.strip(), True, close + 1
    m = _BARE_STOP.search(text, i)
    end = m.start() if m else n
    return text[i:end], False, end


def _read_group(text: str, i: int, start: int, who: str, bodies: list[tuple[str, bool]]) -> int:
    """A synonym group ``(asr | "speech recognition")`` at ``i``: its alternatives go into
    ``bodies``; returns the position after the closing parenthesis."""
    n = len(text)
    i += 1
    while True:
        while i < n and text[i] in " \t":
            i += 1
        m = _GROUP_WORD_STOP.search(text, i)
        if i < n and text[i] == '"':
            body, quoted, i = _read_body(text, i, start, who)
        else:
            end = m.start() if m else n
            body, quoted, i = text[i:end].strip(), False, end
        if not body:
            raise ProfileError(
                f"{who}: empty alternative in the group {text[start : i + 1]!r}: write "
                'words or phrases between the bars, as in (asr | "speech recognition").'
            )
        bodies.append((body, quoted))
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == "|":
            i += 1
            continue
        if i < n and text[i] == ")":
            if len(bodies) < 2:
                raise ProfileError(
                    f"{who}: the group {text[start : i + 1]!r} has one alternative: a group "
                    'lists two or more, as in (asr | "speech recognition").'
                )
            return i + 1
        raise ProfileError(
            f"{who}: unclosed group in {text[start:]!r}: separate alternatives with | and "
            'close the group with ), as in (asr | "speech recognition").'
        )


def _unknown_prefix(text: str, start: int, prefix: re.Match[str], who: str) -> str:
    """The message for ``titel:speech`` or ``abstract:"a phrase"``: the known prefixes, and
    how to write what was probably meant."""
    after = prefix.end()
    if text[after] == '"':
        close = text.find('"', after + 1)
        end = close + 1 if close >= 0 else len(text)
        hint = f"to match the phrase anywhere, leave the prefix out: {text[after:end]}"
    else:
        stop = _BARE_STOP.search(text, after)
        end = stop.start() if stop else len(text)
        hint = f'to match the text as written, put it in quotes: "{text[prefix.start() : end]}"'
    return (
        f"{who}: unknown field prefix {prefix.group(1)!r} in {text[start:end]!r} (known "
        f"prefixes: {', '.join(FIELD_PREFIXES)}, as in title:llm); {hint}."
    )


def _parse_weight(raw: str, written: str, who: str) -> float:
    """A weight must be a plain positive number: 0 would silently disable the term, and a huge
    one makes scores infinite (a paper that matches everything, JSON that is not JSON)."""
    value = float(raw) if _WEIGHT.fullmatch(raw) else 0.0
    if not (0.0 < value <= MAX_WEIGHT):
        raise ProfileError(
            f"{who}: bad weight {raw!r} in the term {written!r}: a weight is a positive number "
            f'up to {MAX_WEIGHT:g}, as in speech^2 or "a phrase"^0.5.'
        )
    return value


def _format_weight(weight: float) -> str:
    # repr round-trips a float exactly; integers read better without ".0".
    return str(int(weight)) if weight.is_integer() and abs(weight) < 1e15 else repr(weight)


def _format_term(term: ProfileTerm) -> str:
    text = term.text
    bare = (
        text
        and not _BARE_STOP.search(text)
        and not text.startswith("-")
        and not text.casefold().startswith("title:")
        and not text.startswith("(")
        and not _PREFIX_LIKE.match(text)
        and text not in _OPERATORS
    )
    out = ("-" if term.exclude else "") + ("title:" if term.title_only else "")
    out += "author:" if term.author else ""
    out += f'exact:"{text}"' if term.exact else (text if bare else f'"{text}"')
    if term.weight != 1.0:
        out += "^" + _format_weight(term.weight)
    return out


def format_profile(profile: Profile) -> str:
    """The profile in its own syntax: ``parse_profile(format_profile(p)) == p``. Terms the
    vocabulary added are left out: parsing adds them again."""
    typed = [t for t in profile.terms if not t.via]
    out: list[str] = []
    k = 0
    while k < len(typed):
        term = typed[k]
        j = k + 1
        while j < len(typed) and _same_group(term, typed[j]):
            j += 1
        if j - k == 1:
            out.append(_format_term(term))
        else:
            head = ("-" if term.exclude else "") + ("title:" if term.title_only else "")
            alts = " | ".join(_format_body(t.text) for t in typed[k:j])
            weight = "^" + _format_weight(term.weight) if term.weight != 1.0 else ""
            out.append(f"{head}({alts}){weight}")
        k = j
    return ", ".join(out)


def _same_group(a: ProfileTerm, b: ProfileTerm) -> bool:
    """Written as one synonym group: the group's alternatives share everything but the text
    (terms the vocabulary put in one group keep their own weights and are written apart)."""
    return a.group > 0 and (a.group, a.weight, a.title_only, a.exclude, a.exact, a.author) == (
        b.group,
        b.weight,
        b.title_only,
        b.exclude,
        b.exact,
        b.author,
    )


def _format_body(text: str) -> str:
    bare = (
        text
        and not _GROUP_WORD_STOP.search(text)
        and not _PREFIX_LIKE.match(text)
        and text not in _OPERATORS
    )
    return text if bare else f'"{text}"'
