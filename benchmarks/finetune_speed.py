"""SST-2 fine-tuning speed: tfpretrain vs Hugging Face transformers' Trainer (PyTorch), one machine.

Same checkpoint (the minilm_l6 preset, all-MiniLM-L6-v2), same random subset of SST-2 train
(seed 0), batch 32, at most --seq-length tokens (head truncation), AdamW lr 2e-5 with 10% linear
warm-up, weight decay 0.01, gradient clipping 1.0, fp32, one epoch, no evaluation. Sides:

- tfpretrain: the library API in this process (tokenize_texts → make_batches, length buckets,
  each batch padded to its longest example → fit);
- hf_default: Trainer with DataCollatorWithPadding (random batches, padded to their longest);
- hf_group_by_length: the same with the length-grouped sampler (group_by_length).

Model loading is outside the clock; the clock covers tokenisation from raw strings and one epoch
of training (tfpretrain also traces its step function and writes its epoch-end checkpoint
inside it). The Hugging Face side runs in benchmarks/.hf-venv (created on first use) as a
subprocess. Prints one table and writes JSON (--output).

    python benchmarks/finetune_speed.py                       # 9600 examples = 300 steps per side
    python benchmarks/finetune_speed.py --examples 320 --sides tfpretrain,hf_default
    python benchmarks/finetune_speed.py --long-texts --examples 1600  # every example 128 tokens
"""

import argparse
import inspect
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa: E402

from benchmarks import common  # noqa: E402

SIDES = ("tfpretrain", "hf_default", "hf_group_by_length")
LEARNING_RATE, WEIGHT_DECAY, WARMUP, CLIP_NORM, SEED = 2e-5, 0.01, 0.1, 1.0, 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=common.DEFAULT_DATA,
                        help="folder with SST-2 train.tsv (default: %(default)s)")
    parser.add_argument("--examples", type=int, default=9600,
                        help="random training examples, seed 0 (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="examples per step (default: %(default)s)")
    parser.add_argument("--seq-length", type=int, default=128,
                        help="most tokens per example (default: %(default)s)")
    parser.add_argument("--long-texts", action="store_true",
                        help="the long-text regime: each example joins consecutive SST-2 "
                             "sentences up to at least --seq-length words, so every example "
                             "fills --seq-length tokens on every side")
    common.add_output_arguments(parser, SIDES, "finetune_speed")
    runtime = parser.add_argument_group(
        "tfpretrain runtime options (forwarded to tfpretrain.fit when it takes them)")
    runtime.add_argument("--steps-per-execution", type=int, default=1)
    runtime.add_argument("--jit-compile", action="store_true")
    runtime.add_argument("--precision", default="float32",
                         help="tp.set_precision policy (default: %(default)s)")
    runtime.add_argument("--implementation", default="saved_model",
                         choices=("saved_model", "keras"),
                         help="the encoder: restored SavedModel or Keras-native KerasHub "
                              "backbone (default: %(default)s)")
    runtime.add_argument("--deterministic", action="store_true",
                         help="deterministic TensorFlow ops (the recipes' default; slower)")
    args = parser.parse_args(argv)
    common.parse_sides(parser, args, SIDES)
    if args.examples < args.batch_size:
        parser.error("--examples must be at least --batch-size")
    return args


def fit_options(fit, args):
    """The runtime keyword arguments ``fit`` takes; an error for a non-default one it does not."""
    wanted = {"steps_per_execution": (args.steps_per_execution, 1),
              "jit_compile": (args.jit_compile, False)}
    accepted = inspect.signature(fit).parameters
    options = {}
    for name, (value, default) in wanted.items():
        if name in accepted:
            options[name] = value
        elif value != default:
            sys.exit(f"error: this tfpretrain.fit takes no {name}; drop --{name.replace('_', '-')}")
    return options


def run_tfpretrain(texts, labels, args):
    import tensorflow as tf

    import tfpretrain as tp
    from tfpretrain.config import TrainConfig

    tp.set_seed(SEED, args.deterministic)
    if hasattr(tp, "set_precision"):
        tp.set_precision(args.precision)
    elif args.precision != "float32":
        sys.exit("error: this tfpretrain has no set_precision; drop --precision")
    options = fit_options(tp.fit, args)
    batch, seq = args.batch_size, args.seq_length
    # Before the clock: the encoder and the model.
    strategy = tp.build_strategy("auto")
    with strategy.scope():
        implementation = ({"implementation": args.implementation}
                          if args.implementation != "saved_model" else {})
        encoder = tp.load_bert_encoder(common.PRESET, trainable=True, seq_length=seq,
                                       **implementation)
        model = tp.build_bert_classifier(encoder.layer, 2, encoder.pooling, 0.1, seed=SEED)
    config = TrainConfig(epochs=1, global_batch_size=batch, learning_rate=LEARNING_RATE,
                         weight_decay=WEIGHT_DECAY, warmup_fraction=WARMUP, clip_norm=CLIP_NORM,
                         checkpoint_every=10 ** 9, seed=SEED)
    common.log(f"tfpretrain: training {len(texts)} examples, batch {batch}, {seq} tokens, "
               f"pooling {encoder.pooling}, fit options {options}, encoder "
               f"{getattr(encoder, 'implementation', 'restored SavedModel')} ...")
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        raw = tf.data.Dataset.from_tensor_slices((tf.constant(texts),
                                                  tf.constant(labels, tf.int32)))
        examples = tp.tokenize_texts(raw, encoder.preprocessor, seq, "head").cache()

        # XLA compiles once per shape: pad to a few fixed lengths where make_batches can.
        fixed = ({"fixed_shapes": True} if args.jit_compile
                 and "fixed_shapes" in inspect.signature(tp.make_batches).parameters else {})

        def train_batches(epoch, skip):
            return tp.make_batches(examples, batch, seq, shuffle_seed=config.seed + epoch,
                                   skip_batches=skip, **fixed)

        steps = sum(1 for _ in train_batches(0, 0))  # tokenises everything into the cache
        tokenized = time.perf_counter()
        with strategy.scope():
            optimizer = tp.build_optimizer(config, steps)
        state = tp.fit(model, optimizer, train_batches, steps, config, strategy, workdir, **options)
        wall = time.perf_counter() - start
    # After the clock: what the trained batches computed (the same batches again: the order is a
    # pure function of the seed and the epoch).
    stats = [common.batch_stats(inputs["input_mask"].numpy()) for inputs, _ in train_batches(0, 0)]
    common.log(f"tfpretrain: done in {wall:.1f} s ({len(texts) / wall:.1f} examples/s)")
    return {"wall_seconds": wall, "tokenize_seconds": tokenized - start,
            "fit_seconds": state.seconds, "steps": state.step, "batch_stats": stats,
            "fit_options": options, "precision": args.precision,
            "implementation": args.implementation,
            "deterministic": args.deterministic, "pooling": encoder.pooling}


def run_hf(texts, labels, args, model_dir, group_by_length):
    return common.run_hf_side("finetune", {
        "model_dir": model_dir, "texts": texts, "labels": labels, "batch_size": args.batch_size,
        "seq_length": args.seq_length, "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY,
        "warmup_fraction": WARMUP, "clip_norm": CLIP_NORM, "seed": SEED,
        "group_by_length": group_by_length})


def load_texts(args):
    """The benchmark's examples: a seed-0 random subset of SST-2 train, or (``--long-texts``)
    consecutive sentences joined to fill ``--seq-length``."""
    texts, labels = common.read_tsv(args.data, "train")
    if args.long_texts:
        return common.long_texts(texts, labels, args.examples, args.seq_length, seed=0)
    return common.random_subset(texts, labels, args.examples, seed=0)


def main(argv=None):
    args = parse_args(argv)
    texts, labels = load_texts(args)
    model_dir = common.hf_model_dir()
    shape = common.model_shape(model_dir)
    hf_wanted = any(side.startswith("hf_") for side in args.sides)
    common.log("measuring the fp32 matmul peak (tf.matmul, 3072x3072, best of 4) ...")
    peaks = {"tf_matmul_flops": common.tf_matmul_peak()}
    if hf_wanted:
        hf_info = common.run_hf_side("peak", {})
        peaks["torch_matmul_flops"] = hf_info["torch_matmul_flops"]
    peak = max(peaks.values())
    common.log("peak fp32 matmul: "
               + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))

    results = {}
    for side in args.sides:
        if side == "tfpretrain":
            results[side] = run_tfpretrain(texts, labels, args)
        else:
            results[side] = run_hf(texts, labels, args, model_dir, side == "hf_group_by_length")
    for result in results.values():
        stats = result.pop("batch_stats")
        computed, useful = common.training_flops(stats, shape)
        real = sum(s[2] for s in stats)
        padded = sum(s[0] * s[1] for s in stats)
        result.update(examples=sum(s[0] for s in stats), batches=len(stats), real_tokens=real,
                      computed_tokens=padded, padding_efficiency=real / padded,
                      examples_per_s=len(texts) / result["wall_seconds"],
                      training_flops_computed=computed, training_flops_useful=useful,
                      hardware_flops_fraction=computed / result["wall_seconds"] / peak,
                      useful_flops_fraction=useful / result["wall_seconds"] / peak)

    header = ["side", "examples/s", "vs HF default", "vs HF group_by_length", "padding efficiency",
              "hardware FLOP/s % of peak", "useful FLOP/s % of peak", "wall s"]
    rows = []
    for side, r in results.items():
        ratio = lambda other: (f"{r['examples_per_s'] / results[other]['examples_per_s']:.2f}x"  # noqa: E731
                               if other in results else "-")
        rows.append([side, f"{r['examples_per_s']:.1f}", ratio("hf_default"),
                     ratio("hf_group_by_length"), f"{r['padding_efficiency']:.3f}",
                     f"{100 * r['hardware_flops_fraction']:.1f}%",
                     f"{100 * r['useful_flops_fraction']:.1f}%", f"{r['wall_seconds']:.1f}"])
    print()
    print(f"SST-2 fine-tuning, {len(texts)} "
          + ("long examples (sentences joined)" if args.long_texts else "examples")
          + f", batch {args.batch_size}, "
          f"{args.seq_length} tokens, one epoch; tfpretrain {args.implementation} encoder, "
          f"{args.precision}; peak fp32 matmul {peak / 1e9:.1f} GFLOP/s")
    print(common.markdown_table(header, rows))
    print()
    common.write_json(args.output, {
        "benchmark": "finetune_speed", "checkpoint": common.PRESET, "model_dir": model_dir,
        "model_shape": shape,
        "settings": {"examples": len(texts), "long_texts": args.long_texts,
                     "batch_size": args.batch_size,
                     "seq_length": args.seq_length, "learning_rate": LEARNING_RATE,
                     "weight_decay": WEIGHT_DECAY, "warmup_fraction": WARMUP,
                     "clip_norm": CLIP_NORM, "seed": SEED, "data": os.path.abspath(args.data)},
        "machine": {**common.machine_info(), "peak_flops": peak, **peaks,
                    **({k: hf_info[k] for k in ("torch", "transformers", "torch_threads",
                                                "torch_interop_threads")}
                       if hf_wanted else {})},
        "results": results})
    return results


if __name__ == "__main__":
    main()
