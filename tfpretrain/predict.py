"""Try an exported model on a few inputs, with nothing but the export.

    python -m tfpretrain.predict --model runs/bert_text_classifier/export "Shares fell 5%." "A late goal"
    python -m tfpretrain.predict --model runs/bert_text_classifier/export --file texts.txt --json
    python -m tfpretrain.predict --model runs/mrpc/export "The cat sat." "A cat was sitting."
    python -m tfpretrain.predict --model runs/resnet_image_classifier/export digit.png photo.jpg
    python -m tfpretrain.predict --model runs/bert_token_classifier/export "EU rejects German call"

Prints one row per input as a table (or JSON lines): the label and its probability (with
every class's probability in JSON) for a classifier, the score for regression, the labels
above the export's threshold for multi-label, the entities (type, text, character offsets,
score) for a token classifier. Text exports take strings; an export of sentence
pairs takes its inputs two at a time (arguments in order, or a --file line with the two texts
separated by a tab); image exports (input ``image_bytes``) take image files, sent as their
encoded bytes. Needs only ``tensorflow`` and ``tensorflow_text``: a teammate can run it without
the training data or this project's code paths.
"""  # noqa: E501  (the usage lines above are printed by --help as they are)

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence


def _load(path):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the export's tokeniser ops)

    if not tf.saved_model.contains_saved_model(path):
        raise FileNotFoundError(f"--model {path}: no SavedModel there (expected an export/ "
                                "directory)")
    serve = tf.saved_model.load(path).signatures.get("serving_default")
    if serve is None:
        raise ValueError(f"--model {path}: the SavedModel has no serving_default signature")
    inputs = sorted(serve.structured_input_signature[1])  # text, or text_a and text_b
    outputs = set(serve.structured_outputs)
    if len(inputs) > 2 or not ({"probabilities", "label"} <= outputs or "score" in outputs
                               or {"probabilities", "labels"} <= outputs
                               or "entity_type" in outputs):
        raise ValueError(f"--model {path}: serving_default takes {inputs} and returns "
                         f"{sorted(outputs)}; expected one or two inputs and 'probabilities' "
                         "with 'label' or 'labels', 'score', or entities")
    labels_file = os.path.join(path, "assets", "labels.txt")
    names = None
    if os.path.exists(labels_file):
        with open(labels_file, encoding="utf-8") as f:
            names = f.read().split("\n")[:-1]
    return serve, inputs, names


def _rows(inputs, out, names):
    """One dict per input of the outputs ``out`` of a batch."""
    rows = []
    for i, value in enumerate(inputs):
        row = {"input": value}
        if "score" in out:
            row["score"] = float(out["score"][i])
        if "probabilities" in out:
            p = out["probabilities"][i]
            row["probabilities"] = dict(zip(names or [str(k) for k in range(len(p))],
                                            map(float, p)))
        if "label" in out:
            row["label"], row["probability"] = out["label"][i].decode(), float(p.max())
        if "labels" in out:
            row["labels"] = [v.decode() for v in out["labels"][i] if v]
        if "entity_type" in out:
            row["entities"] = [
                {"type": out["entity_type"][i, k].decode(),
                 "text": out["entity_text"][i, k].decode(),
                 "start": int(out["entity_start"][i, k]), "end": int(out["entity_end"][i, k]),
                 "score": float(out["entity_score"][i, k])}
                for k in range(int(out["entity_count"][i]))]
        rows.append(row)
    return rows


def predict(path: str, texts: Sequence, batch_size: int = 64) -> list[dict]:
    """One dict per input of ``texts`` (strings; ``(text_a, text_b)`` pairs for an export of
    pairs; image file paths for an image export) with the export at ``path``: ``input``, then
    ``label``, ``probability`` and ``probabilities`` (classifier), ``score`` (regression) or
    ``labels`` and ``probabilities`` (multi-label), or ``entities`` (token classifier: dicts of
    ``type``, ``text``, ``start``, ``end`` character offsets and ``score``).

    Example:
        >>> predict("runs/bert_text_classifier/export", ["Shares fell 5%."])  # doctest: +SKIP
        [{'input': 'Shares fell 5%.', 'label': 'business', 'probability': 0.98, ...}]
        >>> predict("runs/stsb/export", [("A man plays.", "A man is playing.")])  # doctest: +SKIP
        [{'input': ('A man plays.', 'A man is playing.'), 'score': 4.6}]
    """
    return _predict(_load(path), texts, batch_size)


def _predict(loaded, texts, batch_size):
    import tensorflow as tf

    serve, input_names, names = loaded
    images = input_names[0].endswith("_bytes")
    if images:  # an image export: the inputs are image files
        missing = [(i, t) for i, t in enumerate(texts, 1) if not os.path.isfile(t)]
        if missing:
            index, name = missing[0]
            raise FileNotFoundError(f"this export takes image files; input {index} is not a "
                                    f"file: {name or '(a blank line)'}")
    pairs = len(input_names) == 2
    if any(isinstance(t, tuple) != pairs for t in texts):
        raise ValueError(f"this export takes {'pairs of texts' if pairs else 'single inputs'} "
                         f"({', '.join(input_names)})")
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        if images:
            columns = [[pathlib.Path(t).read_bytes() for t in batch]]
        else:
            columns = [list(c) for c in zip(*batch)] if pairs else [batch]
        out = serve(**{name: tf.constant(column, tf.string)
                       for name, column in zip(input_names, columns)})
        rows += _rows(batch, {k: v.numpy() for k, v in out.items()}, names)
    return rows


def _pair_up(texts, from_file):
    """Inputs of an export of pairs: arguments two at a time, file lines split at a tab."""
    if from_file:
        split = [tuple(t.split("\t")) for t in texts]
        bad = next((i for i, t in enumerate(split, 1) if len(t) != 2), None)
        if bad:
            raise ValueError(f"--file line {bad}: an export of pairs takes two texts per line, "
                             "separated by a tab")
        return split
    if len(texts) % 2:
        raise ValueError(f"an export of pairs takes its inputs two at a time; got {len(texts)}")
    return list(zip(texts[::2], texts[1::2]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfpretrain.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export directory (a serving SavedModel)")
    parser.add_argument("texts", nargs="*", metavar="INPUT",
                        help="texts to classify, or image files for an image export")
    parser.add_argument("--file", help="a text file, one input (text or image path) per line; "
                        "every line gets one output, blank lines included")
    parser.add_argument("--json", action="store_true",
                        help="JSON lines with every class's probability")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's C++ logging (quiet by default)")
    args = parser.parse_args(argv)
    texts = list(args.texts)
    try:
        if args.file:
            # One output per line, blank lines too, so --json lines up with the file.
            with open(args.file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        if not texts and not args.file:
            raise ValueError("nothing to predict: give inputs or --file")
        loaded = _load(args.model)
        if len(loaded[1]) == 2:
            texts = _pair_up(texts, False) + (_pair_up(lines, True) if args.file else [])
        elif args.file:
            texts += lines
        rows = _predict(loaded, texts, args.batch_size)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        for row in rows:
            print(json.dumps({k: round(v, 6) if isinstance(v, float) else
                              {c: round(p, 6) for c, p in v.items()} if isinstance(v, dict) else v
                              for k, v in row.items()}, ensure_ascii=False))
        return 0
    if "entities" in rows[0]:
        for row in rows:
            found = "; ".join(f"{e['type']} {e['text']!r} {e['start']}-{e['end']} "
                              f"{e['score']:.2f}" for e in row["entities"])
            print(f"{row['input']}\n    {found or '(no entities)'}")
        return 0
    shown = [" | ".join(r["input"]) if isinstance(r["input"], tuple) else r["input"] for r in rows]
    width = min(60, max(len(t) for t in shown))
    answer = "score" if "score" in rows[0] else "labels" if "labels" in rows[0] else "label"
    print(f"{'input':<{width}}  {answer:<15}" + (" probability" if answer == "label" else ""))
    for text, row in zip(shown, rows):
        text = text if len(text) <= width else text[:width - 1] + "…"
        value = {"score": lambda: f"{row.get('score', 0):.4f}",
                 "labels": lambda: "|".join(row.get("labels", [])) or "-",
                 "label": lambda: f"{row.get('label')!s:<15} {row.get('probability', 0):.4f}"}
        print(f"{text:<{width}}  {value[answer]():<15}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
