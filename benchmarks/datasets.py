"""The default text recipe on every offline dataset: what the automatic budget chose, how long it
took, what it scored, beside the published reference.

Runs ``python -m recipes.bert_text_classifier`` with its default flags (only the data flags
differ) on BBC News (the TFDS builder), SST-2, HWU64, MRPC (pairs), STS-B (pairs, regression) and
CoNLL-2003's entity types per sentence (multi-label) from ``../shared/data/``, and
``python -m recipes.bert_token_classifier`` on CoNLL-2003's named entities and
``python -m recipes.use_text_classifier --model.trainable=true`` on STS-B (``stsb_sentence``: the
sentence encoder fine-tuned, beside its untrained cosine), and prints one Markdown table. Each
run has its own work directory under ``--workdir``; a finished run is read, not repeated (delete
its directory to rerun), so the script can be stopped and restarted.

    python -m benchmarks.datasets                       # all datasets (hours on a 2-core CPU)
    python -m benchmarks.datasets --only hwu64 --extra=--train.max_minutes=25
"""

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import ROOT, markdown_table

DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))

# name -> (data flags, test split name, published reference)
DATASETS = {
    "bbc_news": ([], "test", "—"),
    "sst2": ([f"--data.train_file={DATA}/sst2/train.tsv", f"--data.test_file={DATA}/sst2/dev.tsv"],
             "dev", "MiniLM-L6×H384 91.5 (dev; MiniLM paper)"),
    "hwu64": ([f"--data.train_file={DATA}/hwu64/train.csv",
               f"--data.validation_file={DATA}/hwu64/dev.csv",
               f"--data.test_file={DATA}/hwu64/test.csv", "--data.label_key=category"], "test",
              "BERT-base 89.9 (DialoGLUE)"),
    "mrpc": ([f"--data.train_file={DATA}/mrpc/train.tsv",
              f"--data.validation_file={DATA}/mrpc/dev.tsv",
              f"--data.test_file={DATA}/mrpc/test.tsv", "--data.text_key=sentence1,sentence2"],
             "test", "BERT-base 84.6 / F1 88.9 (GLUE test)"),
    "stsb": ([f"--data.train_file={DATA}/stsb/train.tsv",
              f"--data.validation_file={DATA}/stsb/dev.tsv",
              f"--data.test_file={DATA}/stsb/test.tsv", "--data.text_key=sentence1,sentence2",
              "--data.label_key=score"], "test",
             "BERT-base 89.0 (Pearson/Spearman avg.); all-MiniLM-L6-v2 untrained cosine 86.7"),
    # The sentence-encoder recipe fine-tuned as a bi-encoder (Sentence-BERT's features of u, v).
    "stsb_sentence": ([f"--data.train_file={DATA}/stsb/train.tsv",
                       f"--data.validation_file={DATA}/stsb/dev.tsv",
                       f"--data.test_file={DATA}/stsb/test.tsv",
                       "--data.text_key=sentence1,sentence2", "--data.label_key=score",
                       "--model.trainable=true"], "test", "BERT-base 89.0 (cross-encoder)"),
    "conll_types": ([f"--data.train_file={DATA}/conll2003/train.txt",
                     f"--data.validation_file={DATA}/conll2003/dev.txt",
                     f"--data.test_file={DATA}/conll2003/test.txt", "--data.format=conll"],
                    "test", "—"),
    "conll_ner": ([f"--data.train_file={DATA}/conll2003/train.txt",
                   f"--data.validation_file={DATA}/conll2003/dev.txt",
                   f"--data.test_file={DATA}/conll2003/test.txt"], "test",
                  "sentence-level BERT-base 91–92, DistilBERT ~90 (entity F1)"),
}
RECIPES = {"conll_ner": "bert_token_classifier",  # the others: bert_text_classifier
           "stsb_sentence": "use_text_classifier"}

# The headline metric of each task type: (key in metrics.json, the second figure shown beside it)
HEADLINE = {"classification": ("accuracy", "f1"), "regression": ("spearman", "pearson"),
            "multilabel": ("micro_f1", "macro_f1"), "tagging": ("f1", "precision")}


def run(name, workdir, extra):
    """Runs (or reads back) the recipe on dataset ``name``; returns its metrics and timing."""
    flags, _, _ = DATASETS[name]
    metrics_file = os.path.join(workdir, "metrics.json")
    if not os.path.exists(metrics_file):
        recipe = RECIPES.get(name, "bert_text_classifier")
        command = [sys.executable, "-m", f"recipes.{recipe}",
                   f"--workdir={workdir}", *flags, *extra]
        print(f"[bench] {' '.join(command[1:])}", flush=True)
        with open(os.path.join(os.path.dirname(workdir), f"{name}.log"), "w") as log:
            result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            sys.exit(f"error: the {name} run failed (exit {result.returncode}); see {log.name}")
    with open(metrics_file) as f:
        metrics = json.load(f)
    with open(os.path.join(workdir, "timing.json")) as f:
        timing = json.load(f)
    return metrics, timing


def row(name, metrics, timing):
    _, split, reference = DATASETS[name]
    budget = metrics.get("budget", {})
    history = metrics["validation_history"]
    main_metric, second = HEADLINE[metrics.get("task", "classification")]
    last, best, test = history[-1], metrics["best_validation"], metrics["test"]
    stopped = metrics.get("stopped_by") or "end of schedule"
    shown = f"{main_metric} {100 * test[main_metric]:.2f}" + (
        f", {second} {100 * test[second]:.2f}" if second in test else "")
    if "cosine_baseline" in metrics:  # the sentence encoder's zero-training baseline
        shown += f"; untrained cosine {100 * metrics['cosine_baseline'][main_metric]:.2f}"
    return [name, f"{metrics['split_sizes']['train']:,}",
            len(metrics.get("label_names", metrics.get("entity_types", []))) or "score",
            budget.get("epochs", "—"),
            metrics["steps"], stopped, f"{timing['train_seconds'] / 60:.1f}",
            f"{100 * best[main_metric]:.2f} (step {best['step']}; "
            f"last {100 * last[main_metric]:.2f})", f"{shown} ({split})", reference]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "benchmark_datasets"))
    parser.add_argument("--only", nargs="*", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--extra", action="append", default=[],
                        help="a recipe flag added to every run (repeatable)")
    args = parser.parse_args(argv)
    rows, workdir = [], os.path.abspath(args.workdir)  # the recipe runs with cwd = the repository
    os.makedirs(workdir, exist_ok=True)
    for name in args.only:
        metrics, timing = run(name, os.path.join(workdir, name), args.extra)
        rows.append(row(name, metrics, timing))
    header = ["dataset", "train examples", "classes", "epochs (auto)", "steps", "stopped by",
              "train minutes", "best validation", "test", "published"]
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
