"""Try an exported classifier on a few inputs, with nothing but the export.

    python -m tfpretrain.predict --model runs/bert_text_classifier/export "Shares fell 5%." "A late goal"
    python -m tfpretrain.predict --model runs/bert_text_classifier/export --file texts.txt --json
    python -m tfpretrain.predict --model runs/resnet_image_classifier/export digit.png photo.jpg

Prints the label and its probability per input as a table (or JSON lines with every class's
probability), calling the export's ``serving_default`` in batches. Text exports take strings;
image exports (input ``image_bytes``) take image files, sent as their encoded bytes. Needs only
``tensorflow`` and ``tensorflow_text``: a teammate can run it without the training data or this
project's code paths.
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
    inputs = serve.structured_input_signature[1]
    outputs = set(serve.structured_outputs)
    if len(inputs) != 1 or not {"probabilities", "label"} <= outputs:
        raise ValueError(f"--model {path}: serving_default takes {sorted(inputs)} and returns "
                         f"{sorted(outputs)}; expected one input and 'probabilities', 'label'")
    labels_file = os.path.join(path, "assets", "labels.txt")
    names = None
    if os.path.exists(labels_file):
        with open(labels_file, encoding="utf-8") as f:
            names = f.read().split("\n")[:-1]
    return serve, next(iter(inputs)), names


def predict(path: str, texts: Sequence[str],
            batch_size: int = 64) -> list[tuple[str, str, float, dict[str, float]]]:
    """[(input, label, probability, {label: probability})] for ``texts`` (strings, or image file
    paths for an image export) with the export at ``path``.

    Example:
        >>> predict("runs/bert_text_classifier/export", ["Shares fell 5%."])  # doctest: +SKIP
        [('Shares fell 5%.', 'business', 0.98, {...})]
        >>> predict("runs/resnet_image_classifier/export", ["seven.png"])  # doctest: +SKIP
        [('seven.png', '7', 0.99, {...})]
    """
    import tensorflow as tf

    serve, input_name, names = _load(path)
    if input_name.endswith("_bytes"):  # an image export: the inputs are image files
        missing = [(i, t) for i, t in enumerate(texts, 1) if not os.path.isfile(t)]
        if missing:
            index, name = missing[0]
            raise FileNotFoundError(f"this export takes image files; input {index} is not a "
                                    f"file: {name or '(a blank line)'}")
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        if input_name.endswith("_bytes"):
            batch_values = [pathlib.Path(t).read_bytes() for t in batch]
        else:
            batch_values = batch
        out = serve(**{input_name: tf.constant(batch_values, tf.string)})
        probabilities = out["probabilities"].numpy()
        for text, label, p in zip(batch, out["label"].numpy(), probabilities):
            classes = names or [str(i) for i in range(len(p))]
            rows.append((text, label.decode(), float(p.max()), dict(zip(classes, map(float, p)))))
    return rows


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
                texts += f.read().splitlines()
        if not texts:
            raise ValueError("nothing to classify: give texts or --file")
        rows = predict(args.model, texts, args.batch_size)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        for text, label, probability, classes in rows:
            print(json.dumps({"input": text, "label": label, "probability": round(probability, 6),
                              "probabilities": {k: round(v, 6) for k, v in classes.items()}},
                             ensure_ascii=False))
        return 0
    width = min(60, max(len(t) for t in texts))
    print(f"{'input':<{width}}  {'label':<15} probability")
    for text, label, probability, _ in rows:
        shown = text if len(text) <= width else text[:width - 1] + "…"
        print(f"{shown:<{width}}  {label:<15} {probability:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
