"""Learning curves over label counts: does a pretrained BERT encoder pay, and by how much?

For each labels-per-class count and seed, draws that many training examples of each class (BBC News
by default), trains a classifier (masked-mean pooling, AdamW, the recipes' training loop) from each
encoder given with ``--curve``, and scores it on the whole test split. Prints one Markdown table
(mean ± sample standard deviation over the seeds), writes every run to ``<workdir>/runs.jsonl``
(a finished run is read, not repeated, so the script can be stopped and restarted) and plots the
curves to ``--plot``.

    # the masked-LM export against its own random initial weights (recipes.bert_mlm_pretrain)
    python -m benchmarks.label_curves --workdir=runs/curves_mlm \\
        --curve "pretrained, fine-tuned=runs/bert_mlm_pretrain/export" \\
        --curve "pretrained, frozen + head=runs/bert_mlm_pretrain/export:frozen" \\
        --curve "from scratch=runs/bert_mlm_pretrain/initial"

A ``--curve`` is ``NAME=ENCODER[:frozen][@LEARNING_RATE]``: ENCODER is a directory holding a TF
Hub-format ``encoder/`` and ``preprocessor/`` (what the masked-LM recipe writes) or a preset name;
``:frozen`` trains the head only on the frozen encoder. Every curve of one table sees the same
examples, the same number of steps and the same head.
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


def parse_curve(text, default_rate):
    """``NAME=ENCODER[:frozen][@RATE]`` → ``{"name", "encoder", "frozen", "learning_rate"}``."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest:
        raise argparse.ArgumentTypeError(f"--curve {text!r}: expected NAME=ENCODER[:frozen][@RATE]")
    rate = default_rate
    if "@" in rest:
        rest, _, rate_text = rest.rpartition("@")
        try:
            rate = float(rate_text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"--curve {text!r}: bad learning rate") from error
    frozen = rest.endswith(":frozen")
    encoder = rest[:-len(":frozen")] if frozen else rest
    return {"name": name.strip(), "encoder": encoder, "frozen": frozen, "learning_rate": rate}


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


class TextTask:
    """BBC News (or any ``TextDataConfig``) tokenised once per preprocessor."""

    def __init__(self, args):
        import tensorflow as tf

        import tfpretrain as tp

        self.tf, self.tp, self.args = tf, tp, args
        data = tp.load_text_data(tp.TextDataConfig(**dict(a.split("=", 1) for a in args.data)))
        self.label_names = data.label_names
        self.train = list(data.datasets["train"].as_numpy_iterator())
        self.test = data.datasets["test" if "test" in data.datasets else "validation"]
        self.labels = [int(y) for _, y in self.train]
        self._tests = {}

    def run(self, curve, indices, seed, workdir):
        tf, tp, args = self.tf, self.tp, self.args
        import keras

        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy(args.precision)
        keras.utils.set_random_seed(seed)
        encoder, preprocessor = encoder_pair(curve["encoder"])
        loaded = tp.load_bert_encoder(encoder, preprocessor, trainable=not curve["frozen"],
                                      seq_length=args.seq_length, pooling="mean",
                                      implementation=args.implementation)
        model = tp.build_bert_classifier(loaded.layer, len(self.label_names), "mean", 0.1,
                                         seed=seed)
        texts = [self.train[i][0] for i in indices]
        labels = [self.train[i][1] for i in indices]
        tokenized = tp.tokenize_texts(tf.data.Dataset.from_tensor_slices((texts, labels)),
                                      loaded.preprocessor, loaded.seq_length, "head_tail").cache()
        batch, steps = training_steps(len(indices), args.batch_size, args.min_steps,
                                      args.min_epochs)
        # All passes as one "epoch" of the loop: a tiny subset would otherwise pay a new input
        # pipeline and a checkpoint per pass of one or two steps.
        passes = math.ceil(steps * batch / len(indices)) + 1
        stream = tokenized.repeat(passes)
        config = tp.config.TrainConfig(
            epochs=1, global_batch_size=batch, learning_rate=curve["learning_rate"],
            layer_decay=args.layer_decay, max_steps=steps, checkpoint_every=10 ** 9, seed=seed)
        tp.fit(model, tp.build_optimizer(config, steps),
               lambda epoch, skip: tp.make_batches(stream, batch, loaded.seq_length, seed,
                                                   len(indices) * passes, skip).take(steps),
               steps, config, tf.distribute.get_strategy(), workdir)
        key = (preprocessor or encoder, loaded.seq_length)
        if key not in self._tests:
            self._tests[key] = tp.tokenize_texts(self.test, loaded.preprocessor,
                                                 loaded.seq_length, "head_tail").cache()
        logits, gold = tp.evaluate.predict_outputs(
            model, tp.make_batches(self._tests[key], 64, loaded.seq_length))
        return float(np.mean(logits.argmax(-1) == gold)), steps, batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curve", action="append", required=True,
                        help="NAME=ENCODER[:frozen][@LEARNING_RATE]; repeat for each curve")
    parser.add_argument("--workdir", required=True, help="runs.jsonl and the plot's data go here")
    parser.add_argument("--labels", default="1,2,5,10,20,50",
                        help="labelled examples per class, comma-separated")
    parser.add_argument("--seeds", type=int, default=5, help="seeds (examples drawn, head, order)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="peak AdamW rate of curves without @RATE")
    parser.add_argument("--layer-decay", type=float, default=1.0)
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
    parser.add_argument("--data", action="append", default=[],
                        help="a TextDataConfig field, e.g. --data train_file=hwu64/train.csv")
    parser.add_argument("--plot", default="", help="PNG path (default: <workdir>/curves.png)")
    parser.add_argument("--title", default="BBC News: test accuracy vs labels per class")
    args = parser.parse_args(argv)
    curves = [parse_curve(c, args.learning_rate) for c in args.curve]
    counts = [int(c) for c in args.labels.split(",")]
    os.makedirs(args.workdir, exist_ok=True)
    log_path = os.path.join(args.workdir, "runs.jsonl")
    runs = []
    if os.path.exists(log_path):
        with open(log_path) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    done = {(r["curve"], r["per_class"], r["seed"]) for r in runs}
    task = TextTask(args)
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
                          "frozen": curve["frozen"], "learning_rate": curve["learning_rate"],
                          "per_class": count, "seed": seed, "examples": len(indices),
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
    plot(table, curves, counts, path, args.title)
    print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
