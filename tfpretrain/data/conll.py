"""Tagged words: CoNLL-format files (one word per line with its tags in columns, a blank line or a
``-DOCSTART-`` line between sentences) and JSON lines (``{"tokens": [...], "tags": [...]}``); the
entity tag schemes IOB1, IOB2 and IOBES, checked and converted to IOB2; and entity chunks as
conlleval finds them."""

from __future__ import annotations

import json
from typing import NamedTuple

from tfpretrain.data.tfds import DataError

SCHEMES = ("auto", "IOB1", "IOB2", "IOBES")


class Sentence(NamedTuple):
    """One tagged sentence: its words, their tags, and the file line of each word."""

    words: list[str]
    tags: list[str]
    lines: list[int]


def read_conll(text: str, path: str = "<text>", tag_column: int = -1) -> list[Sentence]:
    """The sentences of CoNLL ``text`` (``path`` names it in errors); the tag is column
    ``tag_column`` (0 is the word; -1, the default, the last column).

    Example:
        >>> [s[:2] for s in read_conll("EU NNP B-ORG\\nrejects VBZ O\\n\\nPeter NNP B-PER\\n")]
        [(['EU', 'rejects'], ['B-ORG', 'O']), (['Peter'], ['B-PER'])]
    """
    sentences, words, tags, lines = [], [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append(Sentence(words, tags, lines))
                words, tags, lines = [], [], []
            continue
        try:
            if tag_column == 0:
                raise IndexError
            tag = fields[tag_column]
        except IndexError:
            raise DataError(f"{path}, line {number}: no tag in column {tag_column} (0 is the word) "
                            f"of {line.strip()!r}; set data.tag_column") from None
        words.append(fields[0])
        tags.append(tag)
        lines.append(number)
    if words:
        sentences.append(Sentence(words, tags, lines))
    if not sentences:
        raise DataError(f"{path} has no sentences (CoNLL format: a word and its tags per line)")
    return sentences


def read_tagged_jsonl(text: str, path: str = "<text>", words_key: str = "tokens",
                      tags_key: str = "tags") -> list[Sentence]:
    """The sentences of JSON-lines ``text``, one ``{"tokens": [...], "tags": [...]}`` per line."""
    sentences = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            words, tags = record[words_key], record[tags_key]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}, line {number}: expected a JSON object with lists "
                            f"{words_key!r} and {tags_key!r}") from None
        if len(words) != len(tags) or not words:
            raise DataError(f"{path}, line {number}: {len(words)} words and {len(tags)} tags; "
                            "each sentence needs one tag per word and at least one word")
        sentences.append(Sentence([str(w) for w in words], [str(t) for t in tags],
                                  [number] * len(words)))
    if not sentences:
        raise DataError(f"{path} has no sentences (JSON lines: {{{words_key!r}: [...], "
                        f"{tags_key!r}: [...]}} per line)")
    return sentences


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` → ``("B", "PER")``, ``"O"`` → ``("O", "")``; None for a tag of no scheme."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[0] in "BIES" and tag[1] in "-_":
        return tag[0], tag[2:]
    return None


def entity_types(tags: list[str]) -> list[str]:
    """The entity types a sentence's tags mention, sorted.

    Example:
        >>> entity_types(["B-ORG", "O", "B-MISC", "I-MISC", "S-ORG"])
        ['MISC', 'ORG']
    """
    return sorted({tag[2:] for tag in tags if tag[:2] in ("B-", "I-", "E-", "S-")})


def entity_type_rows(text: str, path: str = "<text>") -> list[dict[str, str]]:
    """Rows ``{"text", "label"}`` of CoNLL ``text``: a sentence's words joined by spaces, and the
    entity types it mentions joined by ``|`` (empty when none): the multi-label task "which
    entity types does this sentence mention"."""
    return [{"text": " ".join(s.words), "label": "|".join(entity_types(s.tags))}
            for s in read_conll(text, path)]


def detect_scheme(sentences: list[Sentence]) -> str:
    """``IOBES`` if any tag starts ``E-``/``S-``; ``IOB1`` if an ``I-`` tag starts an entity (after
    ``O`` or another type); else ``IOB2``."""
    iob1 = False
    for sentence in sentences:
        previous = ("O", "")
        for tag in sentence.tags:
            parts = split_tag(tag) or ("O", "")
            if parts[0] in "ES":
                return "IOBES"
            if parts[0] == "I" and (previous[0] == "O" or previous[1] != parts[1]):
                iob1 = True
            previous = parts
    return "IOB1" if iob1 else "IOB2"


def _inconsistency(previous, current, following, scheme):
    """Why ``current`` cannot come between ``previous`` and ``following`` (None if it can)."""
    (p, p_type), (c, c_type), (f, f_type) = previous, current, following
    inside = p in "BI" and p_type == c_type  # continues an entity of its type
    if scheme == "IOB2" and c == "I" and not inside:
        return "an I- tag must follow B- or I- of its type"
    if scheme == "IOB1" and c == "B" and not (p in "BI" and p_type == c_type):
        return "in IOB1 a B- tag only separates two entities of one type"
    if scheme == "IOBES":
        if c in "IE" and not inside:
            return f"an {c}- tag must follow B- or I- of its type"
        if c in "BI" and not (f in "IE" and f_type == c_type):
            return f"a {c}- tag must be followed by I- or E- of its type"
    if c in "ES" and scheme != "IOBES":
        return f"{c}- tags belong to IOBES"
    return None


def to_iob2(sentences: list[Sentence], scheme: str = "auto", path: str = "<data>"
            ) -> tuple[list[Sentence], str]:
    """``sentences`` with their tags checked against ``scheme`` (``auto``: ``detect_scheme``) and
    rewritten in IOB2; returns them and the scheme read. A tag outside every scheme or a tag
    sequence the scheme does not allow is a ``DataError`` naming its line.

    Example:
        >>> iob1 = Sentence(["EU", "rejects", "German"], ["I-ORG", "O", "I-MISC"], [1, 2, 3])
        >>> sentences, scheme = to_iob2([iob1])
        >>> sentences[0].tags, scheme
        (['B-ORG', 'O', 'B-MISC'], 'IOB1')
    """
    if scheme not in SCHEMES:
        raise DataError(f"data.tag_scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if scheme == "auto":
        scheme = detect_scheme(sentences)
    converted = []
    for sentence in sentences:
        parts = []
        for tag, line in zip(sentence.tags, sentence.lines):
            split = split_tag(tag)
            if split is None:
                raise DataError(f"{path}, line {line}: tag {tag!r} is not O or B-/I-/E-/S- "
                                "followed by an entity type")
            parts.append(split)
        padded = [("O", ""), *parts, ("O", "")]
        tags = []
        for i, (prefix, kind) in enumerate(parts):
            why = _inconsistency(padded[i], parts[i], padded[i + 2], scheme)
            if why:
                raise DataError(f"{path}, line {sentence.lines[i]}: tag {sentence.tags[i]!r} after "
                                f"{sentence.tags[i - 1] if i else 'the sentence start'!r}: {why} "
                                f"({scheme}; set data.tag_scheme if the file uses another)")
            starts = prefix in "BS" or padded[i][0] == "O" or padded[i][1] != kind
            tags.append("O" if prefix == "O" else ("B-" if starts else "I-") + kind)
        converted.append(sentence._replace(tags=tags))
    return converted, scheme


def chunks(tags: list[str]) -> set[tuple[str, int, int]]:
    """The entities ``(type, first word, last word + 1)`` of a tag sequence, as conlleval reads
    IOB tags: an entity starts at ``B-``, or at ``I-`` after ``O`` or after another type, and
    runs while ``I-`` tags of its type follow (IOBES tags: convert with ``to_iob2`` first).

    Example:
        >>> sorted(chunks(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]))
        [('LOC', 3, 4), ('LOC', 4, 5), ('ORG', 5, 6), ('PER', 0, 2)]
    """
    found, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, this = split_tag(tag) or ("O", "")
        if start is not None and (prefix != "I" or this != kind):
            found.add((kind, start, i))
            start = None
        if prefix != "O" and start is None:
            start, kind = i, this
    return found
