"""The same checkpoint fine-tuned on SST-2 by Hugging Face Trainer: the `dev.tsv` accuracy that
`minilm_l6`'s weights reach outside tfpretrain, with the recipe's training rows and optimizer.

Trains ``AutoModelForSequenceClassification`` (BERT's pooled [CLS] output and a linear layer)
from the preset's own Hugging Face files on the rows ``python -m recipes.bert_text_classifier
--data.train_file=sst2/train.tsv`` trains on (every 10th row held out: 60,614 of 67,349), by
default with its optimizer settings (AdamW, peak rate 1e-4, weight decay 0.01, 10% linear warm-up,
linear decay, gradient norm clipped at 1, batch 32, 2 epochs; the flags change them), then scores
``dev.tsv``. Runs in ``benchmarks/.hf-venv`` (created on first use). About 25 minutes on a
2-core CPU at the defaults (22.3 of them training), 45 at batch 8.

    python -m benchmarks.hf_accuracy
    python -m benchmarks.hf_accuracy --learning-rate=5e-5 --epochs=3 --batch-size=8 \
        --weight-decay=0 --warmup-fraction=0          # TrainingArguments' own defaults
"""

import argparse
import os

from benchmarks import common
from tfpretrain.data.tfds import hold_out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=common.DEFAULT_DATA,
                        help="folder with SST-2's train.tsv and dev.tsv (default: %(default)s)")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--random-sampler", action="store_true",
                        help="Trainer's random batches instead of group_by_length (slower on "
                             "SST-2's short phrases)")
    parser.add_argument("--output", default=os.path.join(common.BENCH_DIR, "results",
                                                         "hf_accuracy.json"),
                        help="JSON results file (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    texts, labels = common.read_tsv(args.data, "train")
    train, _ = hold_out(list(zip(texts, labels)), "as in the recipe",  # its split of train.tsv
                        f"row of {os.path.join(args.data, 'train.tsv')}")
    dev_texts, dev_labels = common.read_tsv(args.data, "dev")
    model_dir = common.hf_model_dir()
    common.log(f"Hugging Face Trainer on {len(train)} SST-2 rows, {args.epochs:g} epochs, batch "
               f"{args.batch_size}, peak rate {args.learning_rate:g}, weight decay "
               f"{args.weight_decay:g}, warm-up {args.warmup_fraction:g}; then {len(dev_texts)} "
               f"rows of dev.tsv")
    result = common.run_hf_side("finetune", {
        "model_dir": model_dir, "texts": [t for t, _ in train], "labels": [y for _, y in train],
        "epochs": args.epochs, "batch_size": args.batch_size, "seq_length": args.seq_length,
        "learning_rate": args.learning_rate, "weight_decay": args.weight_decay,
        "warmup_fraction": args.warmup_fraction,
        "clip_norm": 1.0, "seed": args.seed, "group_by_length": not args.random_sampler,
        "eval_texts": dev_texts, "log_every": 500})
    correct = sum(p == y for p, y in zip(result["predictions"], dev_labels))
    accuracy = correct / len(dev_labels)
    print()
    print(common.markdown_table(
        ["checkpoint", "trainer", "epochs", "batch", "peak rate", "steps", "train minutes",
         "dev accuracy"],
        [[common.PRESET, f"transformers {result['transformers']}", f"{args.epochs:g}",
          str(args.batch_size), f"{args.learning_rate:g}", str(result["steps"]),
          f"{result['wall_seconds'] / 60:.1f}",
          f"{100 * accuracy:.2f}% ({correct} of {len(dev_labels)})"]]))
    print()
    common.write_json(args.output, {
        "benchmark": "hf_accuracy", "checkpoint": common.PRESET, "model_dir": model_dir,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "data": os.path.abspath(args.data), "dev_accuracy": accuracy, "dev_correct": correct,
        "steps": result["steps"], "train_loss": result["train_loss"],
        "wall_seconds": result["wall_seconds"], "options": result["options"],
        "versions": {k: result[k] for k in ("torch", "transformers", "torch_threads")}})
    return accuracy


if __name__ == "__main__":
    main()
