"""Text analysis shared by ranking and highlighting: what "a term matches" means.

Documents and queries go through the same steps, so that a term matches what a researcher
expects it to match:

* case-insensitive (Unicode NFKC + casefold), LaTeX markup removed (``E$^{2}$GAN`` reads
  ``E2GAN``): titles copied from arXiv carry it, and nobody types it in a profile;
* tokens are runs of letters and digits, so ``rag`` never matches inside ``leverage``;
* every token is stemmed (Snowball English, PyStemmer), so ``transformers`` matches
  ``transformer``, and the plural of an acronym without a vowel is made singular first
  (``LLMs`` matches ``LLM``, which Snowball alone does not do);
* hyphen, space and joined forms are equal (``pre-training`` = ``pre training`` =
  ``pretraining``). A document is read as a small lattice: each token, plus each pair of
  adjacent tokens joined (when only a hyphen or white space separates them), plus each whole
  hyphenated chain joined (``coarse-to-fine``). A query term is matched in all the ways its
  words can be grouped the same way;
* a model name that glues an acronym to a word is also read as the two (``VideoMAE`` =
  ``Video MAE``, ``SpeechLLM`` = ``Speech LLM``), so the acronym a reader types matches it;
* a phrase matches only as consecutive tokens (a two-word phrase also in a small window, see
  :func:`variants`), and inside a phrase ``data`` and ``dataset`` are alike.
"""

from __future__ import annotations

import bisect
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import lru_cache

import Stemmer

from newsletter.domain import ProfileTerm

__all__ = ["analyze_query_term", "find", "highlight_spans", "lattice", "prefixes", "variants"]

# LaTeX markup is dropped rather than replaced by a space, so that E$^{2}$GAN reads E2GAN.
_LATEX = re.compile(r"\\[A-Za-z]+|\\|[$^{}_]")
_TOKEN = re.compile(r"(?:[^\W_]|[\u0300-\u036f])+")
_NON_ALNUM = re.compile(r"[\W_]+")
_HYPHENS = "-\u2010\u2011"
_JOINABLE_GAP = re.compile(rf"\s*[{_HYPHENS}]?\s*")
_MAX_QUERY_PARTS = 12  # beyond this, a phrase is matched only in its written grouping

# Snowball stemmers are not thread-safe: one per thread, created once and reused.
_local = threading.local()


def _stemmer() -> Stemmer.Stemmer:
    stemmer: Stemmer.Stemmer | None = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = Stemmer.Stemmer("english")
        _local.stemmer = stemmer
    return stemmer


_VOWELS = frozenset("aeiouy")


def _singular_acronym(word: str) -> str:
    """``llms`` → ``llm``: the plural of an acronym without a vowel (LLMs, VLMs, GNNs, LMs).

    Snowball removes a plural ``s`` only after a part with a vowel in it, so ``llms`` stayed
    ``llms`` and ``LLMs`` matched other papers than ``LLM``. A word of at least three letters
    or digits with no vowel before a final single ``s`` is read as such a plural (``fps`` becomes
    ``fp`` too: the same in documents and profiles, so a match is only ever gained)."""
    if (
        len(word) >= 3
        and word[-1] == "s"
        and word[-2] != "s"
        and word.isascii()
        and _VOWELS.isdisjoint(word[:-1])
    ):
        return word[:-1]
    return word


def _stem(word: str) -> str:
    result: str = _stemmer().stemWord(_singular_acronym(word))
    return result


def _stem_words(words: list[str]) -> list[str]:
    result: list[str] = _stemmer().stemWords([_singular_acronym(w) for w in words])
    return result


# --------------------------------------------------------------------------- analysis


# A token: (normalized word, char start, char end), offsets in the original text.
_Tok = tuple[str, int, int]


def _tokens(text: str) -> tuple[list[_Tok], list[str]]:
    """Tokens with offsets in the original text, and the gap text before each next token.

    Markup is removed from a copy; offsets are mapped back through the kept segments, so the
    spans stay valid on the text as given (the renderer marks them there).
    """
    seg_clean: list[int] = []  # start of each kept segment in the cleaned text
    seg_orig: list[int] = []  # ... and in the original text
    parts: list[str] = []
    pos_clean = 0
    last = 0
    for m in _LATEX.finditer(text):
        if m.start() > last:
            seg_clean.append(pos_clean)
            seg_orig.append(last)
            parts.append(text[last : m.start()])
            pos_clean += m.start() - last
        last = m.end()
    if last < len(text):
        seg_clean.append(pos_clean)
        seg_orig.append(last)
        parts.append(text[last:])
    clean = "".join(parts)
    plain = len(seg_clean) == 1 and seg_orig[0] == 0  # common case: offsets are unchanged

    def orig(i: int) -> int:
        if plain:
            return i
        k = bisect.bisect_right(seg_clean, i) - 1
        return seg_orig[k] + (i - seg_clean[k])

    toks: list[_Tok] = []
    gaps: list[str] = []
    prev_end = 0
    normalize = unicodedata.normalize
    for m in _TOKEN.finditer(clean):
        raw = m.group()
        word = raw.lower() if raw.isascii() else normalize("NFKC", raw).casefold()
        if not word.isalnum():
            word = _NON_ALNUM.sub("", word)
            if not word:
                continue
        s, e = m.span()
        cut = _model_name_cut(raw)
        pieces = [(word[:cut], s, s + cut), (word[cut:], s + cut, e)] if cut else [(word, s, e)]
        for piece, p_start, p_end in pieces:
            if toks:
                gaps.append(clean[prev_end:p_start])
            start, end = orig(p_start), orig(p_end - 1) + 1
            if not plain:  # close the markup opened since the token's start (PaccMann$^{RL}$)
                end = _close_markup(text, orig(s), end)
            toks.append((piece, start, end))
            prev_end = p_end
    return toks, gaps


# A model name made of a word and an acronym: VideoMAE, SpeechLLM, MaskLLM, PokerGPT, CodeT5.
_MODEL_NAME = re.compile(r"[A-Za-z0-9]*[a-z]{2}(?=[A-Z][A-Z0-9]+$)")


def _model_name_cut(raw: str) -> int:
    """Where a model name splits into its word and its acronym (``VideoMAE`` → 5), else 0.

    ML papers name models by gluing an acronym to a word, and the acronym is what a reader
    types: ``MAE`` should match "VideoMAE", ``LLM`` "SpeechLLM". Such a token is read as two
    tokens with nothing between them, which the lattice also joins back (``videomae`` still
    matches it whole). Only a word ending in two lower-case letters followed by at least two
    capitals or digits to the end of the token is cut, so ``NeRF``, ``LoRA``, ``LLaMA``,
    ``DistilHuBERT`` and all-lower or all-upper words stay one token.
    """
    if raw.islower() or raw.isupper() or not raw.isascii() or not raw.isalnum():
        return 0
    found = _MODEL_NAME.match(raw)
    return found.end() if found and found.end() >= 3 else 0


def _close_markup(text: str, start: int, end: int) -> int:
    """Extend a span over the ``}`` and ``$`` that close markup it opened.

    ``PaccMann$^{RL}$`` is then highlighted whole rather than as ``PaccMann$^{RL``, which
    would leave the rendered LaTeX unbalanced.
    """
    span = text[start:end]
    opened = span.count("{") - span.count("}")
    while opened > 0 and end < len(text) and text[end] == "}":
        end += 1
        opened -= 1
    if text.count("$", start, end) % 2 and end < len(text) and text[end] == "$":
        end += 1
    return end


def _chains(gaps: Sequence[str], n: int) -> list[tuple[int, int]]:
    """Runs of >= 2 tokens joined by a single hyphen (``coarse-to-fine``), as [start, end)."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < n:
        j = i
        while j < n - 1 and len(gaps[j]) == 1 and gaps[j] in _HYPHENS:
            j += 1
        if j > i:
            out.append((i, j + 1))
        i = j + 1
    return out


# An arc of the lattice: (stem, next position, char start, char end).
_Arc = tuple[str, int, int, int]
_Lattice = tuple[tuple[tuple[_Arc, ...], ...], int]


@lru_cache(maxsize=8192)
def lattice(text: str) -> _Lattice:
    """Every way to read the text: tokens, adjacent pairs joined, hyphen chains joined.

    Cached because the renderer highlights the same few hundred titles and abstracts for every
    subscriber; the result is immutable.
    """
    return _build_lattice(text, _stem_words)


@lru_cache(maxsize=8192)
def light_lattice(text: str) -> _Lattice:
    """:func:`lattice` with :func:`light_stem` instead of Snowball: what exclusions match."""
    return _build_lattice(text, lambda words: [light_stem(w) for w in words])


def _build_lattice(text: str, stem_words: Callable[[list[str]], list[str]]) -> _Lattice:
    toks, gaps = _tokens(text)
    n = len(toks)
    arcs: list[list[_Arc]] = [[] for _ in range(n)]
    stems = stem_words([t[0] for t in toks])
    for i, (t, stem) in enumerate(zip(toks, stems, strict=True)):
        arcs[i].append((stem, i + 1, t[1], t[2]))
    pairs = [i for i in range(n - 1) if _JOINABLE_GAP.fullmatch(gaps[i])]
    pair_stems = stem_words([toks[i][0] + toks[i + 1][0] for i in pairs])
    for i, stem in zip(pairs, pair_stems, strict=True):
        arcs[i].append((stem, i + 2, toks[i][1], toks[i + 1][2]))
    for a, b in _chains(gaps, n):
        if b - a >= 3:
            joined = "".join(t[0] for t in toks[a:b])
            arcs[a].append((stem_words([joined])[0], b, toks[a][1], toks[b - 1][2]))
    return tuple(tuple(a) for a in arcs), n


@lru_cache(maxsize=1 << 16)
def author_tokens(name: str) -> tuple[str, ...]:
    """An author name as ``author:`` terms compare it: accents removed, case folded, its words
    (``Zoë  O'Neil-Smith`` → ``zoe o neil smith``)."""
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return tuple(t for t in _NON_ALNUM.split(plain) if t)


def author_matches(term: tuple[str, ...], name: tuple[str, ...]) -> bool:
    """Whether an ``author:`` term names this author: its words appear in the name in the same
    order (``hinton`` and ``geoffrey hinton`` both name "Geoffrey E. Hinton"; ``hinton geoffrey``
    does not)."""
    if not term:
        return False
    k = 0
    for word in name:
        if word == term[k]:
            k += 1
            if k == len(term):
                return True
    return False


def light_stem(word: str) -> str:
    """Exclusions match word forms more strictly than terms do: case, an acronym's plural and
    the plural endings of the S-stemmer (Harman 1991: ``-ies`` → ``-y``, ``-es`` → ``-e``, ``-s``
    dropped, except after ``a``/``e``/``o``/``u``/``s`` as the rules say), nothing else. So
    ``-surveys`` = ``-survey``, but ``-"continued pretraining"`` no longer removes "continual
    pre-training" (Snowball stems continued, continual and continuing alike)."""
    word = _singular_acronym(word)
    if len(word) > 3 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


@lru_cache(maxsize=1 << 16)
def light_variants(text: str) -> frozenset[tuple[str, ...]]:
    """The keys an exclusion matches in :func:`light_lattice`: the groupings of
    :func:`variants` (hyphen, space and joined forms alike), with :func:`light_stem`."""
    words, chains = _query_parts(text)
    n = len(words)
    if not n:
        return frozenset()
    starts = {a: b for a, b in chains}
    written: list[str] = []
    i = 0
    while i < n:
        j = starts.get(i, i + 1)
        written.append(light_stem("".join(words[i:j])))
        i = j
    if n > _MAX_QUERY_PARTS:
        return frozenset({tuple(written)})
    steps: list[list[int]] = [[i + 1] + ([i + 2] if i + 2 <= n else []) for i in range(n)]
    for a, b in chains:
        if b - a >= 3:
            steps[a].append(b)
    out: set[tuple[str, ...]] = {tuple(written)}

    def walk(i: int, acc: tuple[str, ...]) -> None:
        if i == n:
            out.add(acc)
            return
        for j in steps[i]:
            walk(j, acc + (light_stem("".join(words[i:j])),))

    walk(0, ())
    return frozenset(out)


def _query_parts(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    toks, gaps = _tokens(text)
    return [t[0] for t in toks], _chains(gaps, len(toks))


@lru_cache(maxsize=1 << 16)
def analyze_query_term(text: str) -> tuple[str, ...]:
    """The stems of a profile term: one per word, a hyphenated word joined into one.

    Cached: planning parses every subscriber's profile, and their terms repeat.

    ``pre-training`` -> ``("pretrain",)``; ``"Gaussian Splatting"`` -> ``("gaussian", "splat")``.
    An empty tuple means the term has no words (the profile parser rejects it).
    """
    words, chains = _query_parts(text)
    out: list[str] = []
    i = 0
    starts = {a: b for a, b in chains}
    while i < len(words):
        j = starts.get(i, i + 1)
        out.append(_stem("".join(words[i:j])))
        i = j
    return tuple(out)


#: Stands for any one token (or joined pair) of the text in a key: the gap of a phrase window.
ANY = "*"


@lru_cache(maxsize=1 << 18)
def variants(text: str, stems: tuple[str, ...], exact: bool = False) -> frozenset[tuple[str, ...]]:
    """All groupings of a term's words that the document lattice can produce.

    The same groupings as the document side (single words, adjacent pairs, whole hyphen chains),
    so that "pre training", "pre-training" and "pretraining" meet whichever way each side wrote it.

    A term of two words (``"data quality"``, ``vision-language``) also matches them in the
    other order and with up to two words between them (``high-quality data``, ``vision and
    language``, ``quality of the data``; not ``data of very high quality``), unless ``exact``
    (``exact:"…"`` in a profile: the words in this order, next to each other).

    In a phrase of two or more words, ``data`` and ``dataset`` stand for each other (also with
    ``exact``): a dataset is a countable body of data, and papers write "pre-training dataset"
    where a reader types "pretraining data". A single word ``data`` matches only itself.
    """
    if len(stems) == 1 and text.isascii() and text.isalnum():  # the common case: one word
        if _stem(text.lower()) == stems[0]:
            return frozenset({stems})
    if analyze_query_term(text) != stems:
        return frozenset({stems})  # hand-made term: match only its stems as given
    words, chains = _query_parts(text)
    n = len(words)
    if n > _MAX_QUERY_PARTS:
        return frozenset({stems})
    steps: list[list[int]] = [[i + 1] + ([i + 2] if i + 2 <= n else []) for i in range(n)]
    for a, b in chains:
        if b - a >= 3:
            steps[a].append(b)
    out: set[tuple[str, ...]] = set()

    def walk(i: int, acc: tuple[str, ...]) -> None:
        if i == n:
            out.add(acc)
            return
        for j in steps[i]:
            walk(j, acc + (_stem("".join(words[i:j])),))

    walk(0, ())
    out.add(stems)
    if n == 2 and not exact:
        one, two = _stem(words[0]), _stem(words[1])
        for first, last in ((one, two), (two, one)):
            out.update({(first, last), (first, ANY, last), (first, ANY, ANY, last)})
    phrase = len(stems) > 1
    for key in [k for k in out if phrase and len(k) > 1 and not _COUNT_FORMS.keys().isdisjoint(k)]:
        out.add(tuple(_COUNT_FORMS.get(stem, stem) for stem in key))
    return frozenset(out)


#: Mass nouns and their count forms, alike inside a phrase: "pretraining data" matches
#: "pre-training datasets" and "dataset quality" matches "data quality" (stems).
_COUNT_FORMS = {"data": "dataset", "dataset": "data"}


def find(
    arcs: Sequence[Sequence[_Arc]],
    n: int,
    keys: Mapping[tuple[str, ...], object],
    prefixes: frozenset[tuple[str, ...]] | set[tuple[str, ...]],
) -> Iterator[tuple[tuple[str, ...], int, int, int]]:
    """Yield (key, start position, char start, char end) for every path that spells a key.

    Paths are extended only while they are a prefix of some key, so the cost depends on the
    text length, not on the number of keys.
    """
    for p in range(n):
        frontier: list[tuple[tuple[str, ...], int, int]] = [((), p, -1)]
        while frontier:
            nxt: list[tuple[tuple[str, ...], int, int]] = []
            for prefix, pos, cs in frontier:
                if pos >= n:
                    continue
                wild = prefix + (ANY,) if prefix else None  # never a key's first stem
                wild = wild if wild is not None and wild in prefixes else None
                for stem, after, s, e in arcs[pos]:
                    key = prefix + (stem,)
                    first = s if cs < 0 else cs
                    if key in keys:
                        yield key, p, first, e
                    if key in prefixes:
                        nxt.append((key, after, first))
                    if wild is not None and after == pos + 1:  # one word, not a joined pair
                        nxt.append((wild, after, first))
            frontier = nxt


def prefixes(keys: Iterable[tuple[str, ...]]) -> set[tuple[str, ...]]:
    return {k[:i] for k in keys for i in range(1, len(k))}


_IndexedArc = tuple[int, int, int]  # (position after the arc, char start, char end)


@lru_cache(maxsize=1024)  # an issue run highlights a few hundred papers
def _arcs_by_stem(text: str) -> dict[str, tuple[_IndexedArc, ...]]:
    """The text's lattice arcs grouped by stem (cached: papers repeat across subscribers).

    Highlighting looks up where each key's first stem occurs instead of walking every
    position of the text, so its cost follows the matches, not the text's length.
    """
    arcs, n = lattice(text)
    grouped: dict[str, list[_IndexedArc]] = {}
    for pos in range(n):
        for stem, after, s, e in arcs[pos]:
            grouped.setdefault(stem, []).append((after, s, e))
    return {stem: tuple(found) for stem, found in grouped.items()}


def _key_spans(text: str, keys: Iterable[tuple[str, ...]]) -> Iterator[tuple[int, int]]:
    """(char start, char end) of every path of the text's lattice that spells one of ``keys``;
    the same matches as :func:`find` yields for them."""
    by_stem = _arcs_by_stem(text)
    arcs, n = lattice(text)
    for key in keys:
        for after, first, end in by_stem.get(key[0], ()):
            ends = [(after, end)]
            for stem in key[1:]:
                ends = [
                    (nxt, e)
                    for pos, _ in ends
                    if pos < n
                    for arc_stem, nxt, _, e in arcs[pos]
                    if arc_stem == stem or (stem == ANY and nxt == pos + 1)
                ]
                if not ends:
                    break
            for _, e in ends:
                yield first, e


def highlight_spans(text: str, terms: Sequence[ProfileTerm]) -> list[tuple[int, int]]:
    """Character spans of ``text`` (as given) covering every match of every positive term.

    Merged, sorted and non-overlapping, so the renderer can wrap each in ``<mark>`` directly.
    Exclusions are not highlighted: a selected paper never matches one.
    """
    keys: dict[tuple[str, ...], bool] = {}
    for term in terms:
        if not term.exclude and term.stems:
            for key in variants(term.text, term.stems, term.exact):
                keys[key] = True
    if not keys or not text:
        return []
    spans = sorted(_key_spans(text, keys))
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            if e > merged[-1][1]:
                merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged
