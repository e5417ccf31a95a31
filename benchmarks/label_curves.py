"""Learning curves over label counts: does a pretrained encoder pay, and by how much?

For each labels-per-class count and seed, draws that many training examples of each class (BBC News
with ``--task text``, the default; digits 5-9 with ``--task image``), trains a classifier from each
encoder given with ``--curve`` (the recipes' training loop, AdamW; text pools with a masked mean,
images with the ResNet's global average; every curve gets the same augmentation), and scores it on
the whole test split. Prints one Markdown table (mean ± sample standard deviation over the seeds),
writes every run to ``<workdir>/runs.jsonl`` (a finished run is read, not repeated, so the script
can be stopped and restarted) and plots the curves to ``--plot``.

    # the masked-LM export against its own random initial weights (recipes.bert_mlm_pretrain)
    python -m benchmarks.label_curves --workdir=runs/curves_mlm \\
        --curve "pretrained, fine-tuned=runs/bert_mlm_pretrain/export" \\
        --curve "pretrained, frozen + head=runs/bert_mlm_pretrain/export:frozen" \\
        --curve "from scratch=runs/bert_mlm_pretrain/initial"

    # digits 5-9: an encoder pretrained on glyphs against the same ResNet from scratch
    python -m benchmarks.label_curves --task image --workdir=runs/curves_digits \\
        --min-steps 200 --dropout 0.2 \\
        --curve "glyphs, fine-tuned=glyphs_resnet@5e-4" \\
        --curve "glyphs, frozen + head=glyphs_resnet:frozen" \\
        --curve "from scratch=glyphs_resnet:scratch"

A ``--curve`` is ``NAME=ENCODER[:frozen|:scratch][@LEARNING_RATE]``. ENCODER is a directory
holding a TF Hub-format ``encoder/`` and ``preprocessor/`` (what the masked-LM recipe writes) or a
preset name for text; an image feature vector (preset or directory) for images. ``:frozen``
trains the head only on the frozen encoder; ``:scratch`` (images) trains the same architecture
from random weights (``recipes.resnet_pretrain`` exports record it). Every curve of one table sees
the same examples, the same number of steps and the same head.
"""

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import markdown_table

MODES = ("frozen", "scratch")  # ENCODER:MODE; without one, the encoder is fine-tuned


def parse_curve(text, default_rate):
    """``NAME=ENCODER[:frozen|:scratch][@RATE]`` → ``{"name", "encoder", "mode",
    "frozen", "learning_rate"}`` (mode ``fine-tuned``, ``frozen`` or ``scratch``)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest:
        raise argparse.ArgumentTypeError(
            f"--curve {text!r}: expected NAME=ENCODER[:frozen|:scratch][@RATE]")
    rate = default_rate
    if "@" in rest:
        rest, _, rate_text = rest.rpartition("@")
        try:
            rate = float(rate_text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"--curve {text!r}: bad learning rate") from error
    encoder, _, mode = rest.rpartition(":")
    if mode not in MODES or not encoder:
        encoder, mode = rest, "fine-tuned"
    return {"name": name.strip(), "encoder": encoder, "mode": mode, "frozen": mode == "frozen",
            "learning_rate": rate}


def sample_per_class(labels, per_class, seed):
    """Indices of ``per_class`` examples of each class (all of a class's when it has fewer),
    drawn with ``seed``; the same call gives the same examples, and a larger count for the same
    seed keeps the smaller one's examples (nested subsets)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.extend(rng.permutation(members)[:per_class])
    return sorted(int(i) for i in chosen)


def training_steps(examples, batch_size, min_steps, min_epochs):
    """``(batch, steps)``: the batch is ``batch_size`` or the whole subset if smaller; the steps
    are at least ``min_steps`` and ``min_epochs`` passes."""
    batch = min(batch_size, examples)
    return batch, max(min_steps, min_epochs * math.ceil(examples / batch))


def encoder_pair(encoder):
    """A directory with ``encoder/`` and ``preprocessor/``, or a preset / handle as it is."""
    if os.path.isdir(os.path.join(encoder, "encoder")):
        return os.path.join(encoder, "encoder"), os.path.join(encoder, "preprocessor")
    return encoder, ""


def run_settings(curve, args):
    """What a run of ``curve`` was trained with besides its examples and seed (in its record)."""
    return {"learning_rate": curve["learning_rate"],
            "head_fraction": args.head_fraction * (curve["mode"] == "fine-tuned"),
            "layer_decay": args.layer_decay}


def summarise(runs, curves, counts):
    """``{(curve, count): (mean, std, n)}`` of the test accuracies (std: sample, 0 for one)."""
    table = {}
    for curve in curves:
        for count in counts:
            scores = [r["accuracy"] for r in runs
                      if r["curve"] == curve["name"] and r["per_class"] == count]
            if scores:
                std = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
                table[curve["name"], count] = (float(np.mean(scores)), std, len(scores))
    return table


def plot(table, curves, counts, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for curve in curves:
        points = [(c, *table[curve["name"], c][:2]) for c in counts if (curve["name"], c) in table]
        if not points:
            continue
        x, mean, std = (np.array(v) for v in zip(*points))
        axis.plot(x, 100 * mean, marker="o", label=curve["name"])
        axis.fill_between(x, 100 * (mean - std), 100 * (mean + std), alpha=0.2)
    axis.set_xscale("log")
    axis.set_xticks(counts, [str(c) for c in counts])
    axis.set_xlabel("labelled examples per class")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def data_config(config, fields):
    """``config`` (a ``TextDataConfig`` or ``ImageDataConfig``) with each ``--data KEY=VALUE``
    applied as the recipes apply ``--data.KEY=VALUE``: converted to the field's type
    (``swap_pairs=false`` is false), unknown keys and bad values refused."""
    from tfpretrain.config import ConfigError, set_value

    for field in fields:
        key, sep, value = field.partition("=")
        if not sep:
            raise SystemExit(f"--data {field!r}: expected KEY=VALUE")
        try:
            set_value(config, key, value)
        except ConfigError as error:
            raise SystemExit(f"--data {field!r}: {error}") from None
    return config


class Task:
    """Trains and scores one curve's classifier on one subset; a task says how to ``build`` it."""

    def __init__(self, args):
        import tensorflow as tf

        import tfpretrain as tp

        self.tf, self.tp, self.args = tf, tp, args

    def build(self, curve, indices, seed):
        """``(model, encoder layer or None, training examples, batches, test examples)``:
        ``batches(examples, size, shuffle_seed=None, buffer=1, skip=0)`` makes model batches
        (augmented when shuffled)."""
        raise NotImplementedError

    def run(self, curve, indices, seed, workdir):
        tf, tp, args = self.tf, self.tp, self.args
        import keras

        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy(args.precision)
        keras.utils.set_random_seed(seed)
        model, encoder, examples, batches, test = self.build(curve, indices, seed)
        batch, steps = training_steps(len(indices), args.batch_size, args.min_steps,
                                      args.min_epochs)
        # All passes as one "epoch" of the loop: a tiny subset would otherwise pay a new input
        # pipeline and a checkpoint per pass of one or two steps.
        passes = math.ceil(steps * batch / len(indices)) + 1
        stream = examples.repeat(passes)
        head = round(args.head_fraction * steps) if curve["mode"] == "fine-tuned" else 0
        phases = [("head", head, args.learning_rate, False, seed + 1),
                  ("all", steps - head, curve["learning_rate"], True, seed)]
        for phase, phase_steps, rate, trainable, phase_seed in phases:
            if not phase_steps:
                continue
            if encoder is not None and curve["mode"] == "fine-tuned":
                encoder.trainable = trainable  # the head alone first, then everything
            config = tp.config.TrainConfig(
                epochs=1, global_batch_size=batch, learning_rate=rate,
                layer_decay=args.layer_decay, max_steps=phase_steps, checkpoint_every=10 ** 9,
                seed=phase_seed)
            tp.fit(model, tp.build_optimizer(config, phase_steps),
                   lambda epoch, skip, s=phase_seed, n=phase_steps: batches(
                       stream, batch, s, len(indices) * passes, skip).take(n),
                   phase_steps, config, tf.distribute.get_strategy(),
                   os.path.join(workdir, phase))
        logits, gold = tp.evaluate.predict_outputs(model, batches(test, 64))
        return float(np.mean(logits.argmax(-1) == gold)), steps, batch


class TextTask(Task):
    """BBC News (or any ``TextDataConfig``), tokenised once per preprocessor; the model pools the
    encoder's sequence output with a masked mean."""

    def __init__(self, args):
        super().__init__(args)
        tp = self.tp
        data = tp.load_text_data(data_config(tp.TextDataConfig(), args.data))
        self.label_names = data.label_names
        self.train = list(data.datasets["train"].as_numpy_iterator())
        self.test = data.datasets["test" if "test" in data.datasets else "validation"]
        self.labels = [int(y) for _, y in self.train]
        self._tests = {}

    def build(self, curve, indices, seed):
        tf, tp, args = self.tf, self.tp, self.args
        encoder, preprocessor = encoder_pair(curve["encoder"])
        loaded = tp.load_bert_encoder(encoder, preprocessor, trainable=not curve["frozen"],
                                      seq_length=args.seq_length, pooling="mean",
                                      implementation=args.implementation)
        model = tp.build_bert_classifier(loaded.layer, len(self.label_names), "mean",
                                         args.dropout, seed=seed)
        texts = [self.train[i][0] for i in indices]
        labels = [self.train[i][1] for i in indices]
        tokenized = tp.tokenize_texts(tf.data.Dataset.from_tensor_slices((texts, labels)),
                                      loaded.preprocessor, loaded.seq_length, "head_tail").cache()
        key = (preprocessor or encoder, loaded.seq_length)
        if key not in self._tests:
            self._tests[key] = tp.tokenize_texts(self.test, loaded.preprocessor,
                                                 loaded.seq_length, "head_tail").cache()

        def batches(examples, size, shuffle_seed=None, buffer=1, skip=0):
            return tp.make_batches(examples, size, loaded.seq_length, shuffle_seed, buffer, skip)

        return model, loaded.layer, tokenized, batches, self._tests[key]


class ImageTask(Task):
    """Digits 5-9 (``digits_target``'s pool of 80 per class, or any ``ImageDataConfig``): every
    curve gets the same augmentation and head."""

    def __init__(self, args):
        super().__init__(args)
        tp = self.tp
        config = data_config(tp.ImageDataConfig(train_per_class=0), args.data)
        datasets, self.label_names = tp.images.make_image_datasets(config)
        self.augment = config.augment
        self.train = list(datasets["train"].as_numpy_iterator())
        self.test = datasets["test" if "test" in datasets else "validation"]
        self.labels = [int(y) for _, y in self.train]

    def build(self, curve, indices, seed):
        """The encoder fine-tuned whole (batch norm training) or frozen, or its architecture (a
        ``recipes.resnet_pretrain`` export records it) from random weights."""
        tf, tp, args = self.tf, self.tp, self.args
        classes = len(self.label_names)
        from recipes.resnet_pretrain import ensure_preset

        ensure_preset(curve["encoder"])  # a preset resnet_pretrain makes: built on first use
        if curve["mode"] == "scratch":
            path = (tp.zoo.load_preset(curve["encoder"])["encoder"]
                    if tp.zoo.is_preset(curve["encoder"]) else curve["encoder"])
            with open(os.path.join(path, "architecture.json")) as f:
                info = json.load(f)
            size = info["image_size"]
            model = tp.build_resnet_classifier(size, info["filters"], info["blocks"], classes,
                                               args.dropout, seed=seed)
            layer = None
        else:
            encoder = tp.load_image_encoder(curve["encoder"], 0 if curve["frozen"] else -1)
            size = encoder.image_size
            model = tp.build_image_classifier(encoder.layer, classes, size, args.dropout,
                                              seed=seed)
            layer = encoder.layer
        subset = tf.data.Dataset.from_tensor_slices((
            np.stack([self.train[i][0] for i in indices]),
            np.array([self.train[i][1] for i in indices])))
        augment = tp.images.build_augmenter(self.augment, seed)

        def batches(examples, batch, shuffle_seed=None, buffer=1, skip=0):
            return tp.images.make_image_batches(
                examples, batch, size, augment if shuffle_seed is not None else None,
                shuffle_seed, buffer, skip)

        return model, layer, subset, batches, self.test


TASKS = {"text": TextTask, "image": ImageTask}
TITLES = {"text": "BBC News: test accuracy vs labels per class",
          "image": "digits 5-9: test accuracy vs labels per class"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="text", choices=sorted(TASKS),
                        help="text: BBC News (TextDataConfig); image: digits 5-9 "
                             "(ImageDataConfig)")
    parser.add_argument("--curve", action="append", required=True,
                        help="NAME=ENCODER[:frozen|:scratch][@LEARNING_RATE]; repeat for each "
                             "curve")
    parser.add_argument("--workdir", required=True, help="runs.jsonl and the plot's data go here")
    parser.add_argument("--labels", default="1,2,5,10,20,50",
                        help="labelled examples per class, comma-separated")
    parser.add_argument("--seeds", type=int, default=5, help="seeds (examples drawn, head, order)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="peak AdamW rate of curves without @RATE")
    parser.add_argument("--head-fraction", type=float, default=0.0,
                        help="fine-tuned curves: train the head alone on the frozen encoder for "
                             "this share of the steps (at --learning-rate) before everything at "
                             "the curve's rate; the other curves get the same steps")
    parser.add_argument("--layer-decay", type=float, default=1.0,
                        help="fine-tuned curves: each transformer layer below the top trains at "
                             "this times the rate of the one above (embeddings lowest; pooler and "
                             "head at the full rate); 1 = one rate everywhere")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--min-steps", type=int, default=100)
    parser.add_argument("--min-epochs", type=int, default=10)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--implementation", default="saved_model",
                        choices=("saved_model", "keras", "auto"))
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"),
                        help="Keras dtype policy (reaches the encoder with --implementation "
                             "keras)")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="dropout before the classification layer")
    parser.add_argument("--data", action="append", default=[],
                        help="a TextDataConfig / ImageDataConfig field, e.g. --data "
                             "train_file=hwu64/train.csv")
    parser.add_argument("--plot", default="", help="PNG path (default: <workdir>/curves.png)")
    parser.add_argument("--title", default="", help="plot title (default: by task)")
    args = parser.parse_args(argv)
    curves = [parse_curve(c, args.learning_rate) for c in args.curve]
    if args.task == "text" and any(c["mode"] == "scratch" for c in curves):
        parser.error("--task text has no :scratch curves: give the masked-LM run's initial/ "
                     "directory (the same architecture's random weights) as a curve instead")
    counts = [int(c) for c in args.labels.split(",")]
    os.makedirs(args.workdir, exist_ok=True)
    log_path = os.path.join(args.workdir, "runs.jsonl")
    runs = []
    if os.path.exists(log_path):
        with open(log_path) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    settings = {c["name"]: run_settings(c, args) for c in curves}
    for run in runs:  # a finished run is reused only under the settings it was run with
        wanted = settings.get(run["curve"], {})
        ran = {k: run.get(k, 1.0) for k in wanted}  # records before layer_decay: 1.0
        if ran != wanted:
            parser.error(f"{log_path} holds curve {run['curve']!r} run with {ran}, this command "
                         f"asks for {wanted}: name the curve differently or use another --workdir")
    done = {(r["curve"], r["per_class"], r["seed"]) for r in runs}
    task = TASKS[args.task](args)
    total = len(curves) * len(counts) * args.seeds
    for seed in range(args.seeds):
        for count in counts:
            indices = sample_per_class(task.labels, count, seed)
            for curve in curves:
                if (curve["name"], count, seed) in done:
                    continue
                started = time.time()
                workdir = tempfile.mkdtemp(prefix="label-curves-")
                try:  # the training loop's progress lines go to <workdir>/train.log
                    with open(os.path.join(args.workdir, "train.log"), "a") as out, \
                            contextlib.redirect_stdout(out):
                        accuracy, steps, batch = task.run(curve, indices, seed, workdir)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
                record = {"curve": curve["name"], "encoder": curve["encoder"],
                          "frozen": curve["frozen"], "mode": curve["mode"],
                          **settings[curve["name"]], "per_class": count, "seed": seed,
                          "examples": len(indices),
                          "steps": steps, "batch": batch, "accuracy": accuracy,
                          "seconds": round(time.time() - started, 1)}
                runs.append(record)
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"[curves] {len(runs)}/{total} {curve['name']} | {count}/class seed {seed}:"
                      f" {100 * accuracy:.2f}% ({steps} steps of {batch}, "
                      f"{record['seconds']:.0f} s)", flush=True)
    table = summarise(runs, curves, counts)
    rows = [[str(c)] + [f"{100 * table[k['name'], c][0]:.2f} ± {100 * table[k['name'], c][1]:.2f}"
                        if (k["name"], c) in table else "" for k in curves] for c in counts]
    print(markdown_table(["labels per class"] + [c["name"] for c in curves], rows))
    path = args.plot or os.path.join(args.workdir, "curves.png")
    plot(table, curves, counts, path, args.title or TITLES[args.task])
    print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
