"""CoNLL-format entity files: one word per line with its tags in columns, a blank line (or a
``-DOCSTART-`` line) between sentences; the entity tag in the last column (IOB1, IOB2 or IOBES:
``B-PER``, ``I-ORG``, ``S-LOC``, ``O``)."""

from __future__ import annotations

from tfpretrain.data.tfds import DataError


def read_conll(text: str, path: str = "<text>") -> list[tuple[list[str], list[str]]]:
    """``[(words, tags)]`` per sentence of CoNLL ``text`` (``path`` names it in errors).

    Example:
        >>> read_conll("EU NNP B-ORG\\nrejects VBZ O\\n\\nPeter NNP B-PER\\n")
        [(['EU', 'rejects'], ['B-ORG', 'O']), (['Peter'], ['B-PER'])]
    """
    sentences, words, tags = [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        if len(fields) < 2:
            raise DataError(f"{path}, line {number}: expected a word and its tag in columns, got "
                            f"{line.strip()!r}")
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise DataError(f"{path} has no sentences (CoNLL format: a word and its tags per line)")
    return sentences


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
    return [{"text": " ".join(words), "label": "|".join(entity_types(tags))}
            for words, tags in read_conll(text, path)]
