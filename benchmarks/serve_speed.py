"""Serving speed on raw strings: tfpretrain's exported SavedModel and TFLite model vs Hugging Face's
pipeline.

Same checkpoint (the minilm_l6 preset, all-MiniLM-L6-v2) with a 2-class head (untrained: speed
only) on both sides, SST-2 dev sentences (872):

- tfpretrain: ``tp.export_text_classifier`` (tokenisation inside the graph; each request computed
  up to its longest text), loaded with ``tf.saved_model.load(dir).signatures["serving_default"]``;
- tflite: the same model converted by ``tp.tflite.convert`` (--tflite-variant: "dynamic_range",
  int8 weights and float activations as ``--export.tflite=true`` writes, or "float32") with a
  free sequence length, run by the TFLite interpreter (XNNPACK); the clock
  includes tokenisation (the preprocessor's ``bert_pack_inputs`` in TensorFlow, as a
  ``tf.function``) and cuts each request to its longest text, as the SavedModel does;
- hf_pipeline: ``pipeline("text-classification")`` in benchmarks/.hf-venv (a subprocess).

Batch-1 latency: p50/p99 over --single sentences, one request each, after --warmup requests.
Batch-64 throughput: examples/s over the whole dev set in batches of --batch-size (after one
warm-up batch).

    python benchmarks/serve_speed.py
    python benchmarks/serve_speed.py --sides tflite --tflite-variant float32
    python benchmarks/serve_speed.py --export runs/bert_text_classifier/export --single 100 \
        --sides tfpretrain,hf_pipeline
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

SIDES = ("tfpretrain", "tflite", "hf_pipeline")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=common.DEFAULT_DATA,
                        help="folder with SST-2 dev.tsv (default: %(default)s)")
    parser.add_argument("--export", default="",
                        help="an existing export of tp.export_text_classifier (default: build "
                        "and export a minilm_l6 classifier in a temporary folder)")
    parser.add_argument("--seq-length", type=int, default=0,
                        help="most tokens per text (default: the preset's, 256; ignored with "
                        "--export)")
    parser.add_argument("--single", type=int, default=300,
                        help="batch-1 requests timed (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="batch-1 warm-up requests (default: %(default)s)")
    parser.add_argument("--tflite-variant", default="dynamic_range",
                        choices=("dynamic_range", "float32"),
                        help="the tflite side's model (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="throughput batch size (default: %(default)s)")
    common.add_output_arguments(parser, SIDES, "serve_speed")
    args = parser.parse_args(argv)
    common.parse_sides(parser, args, SIDES)
    if args.export and not os.path.isfile(os.path.join(args.export, "saved_model.pb")):
        parser.error(f"--export {args.export}: no saved_model.pb there")
    if args.export and "tflite" in args.sides:
        parser.error("the tflite side converts the classifier it builds; with --export, pass "
                     "--sides tfpretrain,hf_pipeline")
    return args


def build_classifier(seq_length):
    import tfpretrain as tp

    encoder = tp.load_bert_encoder(common.PRESET, trainable=False, seq_length=seq_length or None)
    return encoder, tp.build_bert_classifier(encoder.layer, 2, encoder.pooling, seed=0)


def export_classifier(path, encoder, model):
    import tfpretrain as tp

    common.log(f"exporting a {common.PRESET} classifier ({encoder.seq_length} tokens) to "
               f"{path} ...")
    tp.export_text_classifier(model, ["negative", "positive"], path, encoder.preprocessor,
                              encoder.seq_length)


def _time(predict, single, texts, args):
    """Batch-1 p50/p99 over ``single`` (after ``args.warmup`` requests) and throughput over
    ``texts`` in batches of ``args.batch_size`` (after one warm-up batch)."""
    for text in single[:args.warmup]:
        predict([text])
    latencies = []
    for text in single:
        start = time.perf_counter()
        predict([text])
        latencies.append(time.perf_counter() - start)
    batches = [texts[i:i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
    predict(batches[0])
    start = time.perf_counter()
    for batch in batches:
        predict(batch)
    seconds = time.perf_counter() - start
    latencies = np.asarray(latencies) * 1000
    return {"p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)),
            "batch_seconds": seconds, "batch_examples_per_s": len(texts) / seconds}


def time_tfpretrain(path, single, texts, args):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the export's tokeniser ops)

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return _time(lambda batch: serve(text=tf.constant(batch))["probabilities"].numpy(), single,
                 texts, args)


def time_tflite(encoder, model, single, texts, args):
    import tensorflow as tf

    import tfpretrain as tp
    from tfpretrain.data.pipeline import pack_texts, trim_to_longest

    common.log(f"tflite: converting ({args.tflite_variant}, free sequence length) ...")
    content = tp.tflite.convert(model, None, args.tflite_variant)
    runner = tp.tflite.interpreter(content=content).get_signature_runner()
    # Packed and cut to the longest text as the SavedModel export does, in one graph call.
    pack = tf.function(lambda batch: trim_to_longest(
        pack_texts(encoder.preprocessor, batch, encoder.seq_length)))

    def predict(batch):
        logits = runner(**{k: v.numpy() for k, v in pack(tf.constant(batch)).items()})["logits"]
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return exp / exp.sum(-1, keepdims=True)

    return {**_time(predict, single, texts, args), "variant": args.tflite_variant,
            "model_bytes": len(content)}


def main(argv=None):
    args = parse_args(argv)
    texts, _ = common.read_tsv(args.data, "dev")
    single = texts[:args.single]
    model_dir = common.hf_model_dir() if "hf_pipeline" in args.sides else None
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        seq_length = args.seq_length or 256
        encoder = model = None
        if not args.export and {"tfpretrain", "tflite"} & set(args.sides):
            encoder, model = build_classifier(args.seq_length)
            seq_length = encoder.seq_length
        if "tfpretrain" in args.sides:
            path = args.export
            if not path:
                path = os.path.join(scratch, "export")
                export_classifier(path, encoder, model)
            common.log(f"tfpretrain: {len(single)} single requests, then {len(texts)} texts in "
                       f"batches of {args.batch_size} ...")
            results["tfpretrain"] = {**time_tfpretrain(path, single, texts, args),
                                     "export": args.export or "(temporary)"}
        if "tflite" in args.sides:
            common.log(f"tflite: {len(single)} single requests, then {len(texts)} texts in "
                       f"batches of {args.batch_size} ...")
            results["tflite"] = time_tflite(encoder, model, single, texts, args)
        if "hf_pipeline" in args.sides:
            common.log(f"hf_pipeline: {len(single)} single requests, then {len(texts)} texts in "
                       f"batches of {args.batch_size} ...")
            results["hf_pipeline"] = common.run_hf_side("serve", {
                "model_dir": model_dir, "single": single, "texts": texts, "warmup": args.warmup,
                "batch_size": args.batch_size, "seq_length": seq_length})

    header = ["side", "batch-1 p50 ms", "batch-1 p99 ms", f"batch-{args.batch_size} examples/s",
              "p50 vs HF", "throughput vs HF"]
    hf = results.get("hf_pipeline")
    rows = []
    for side, r in results.items():
        rows.append([side, f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                     f"{r['batch_examples_per_s']:.1f}",
                     f"{r['p50_ms'] / hf['p50_ms']:.2f}x" if hf else "-",
                     f"{r['batch_examples_per_s'] / hf['batch_examples_per_s']:.2f}x"
                     if hf else "-"])
    print()
    print(f"Serving raw strings, SST-2 dev: batch-1 latency over {len(single)} sentences, "
          f"batch-{args.batch_size} throughput over {len(texts)}; p50 vs HF = TF p50 / HF p50 "
          f"(lower is better), throughput vs HF = TF / HF (higher is better)")
    print(common.markdown_table(header, rows))
    print()
    common.write_json(args.output, {
        "benchmark": "serve_speed", "checkpoint": common.PRESET, "settings": {
            "single": len(single), "warmup": args.warmup, "batch_size": args.batch_size,
            "tflite_variant": args.tflite_variant,
            "texts": len(texts), "seq_length": seq_length, "data": os.path.abspath(args.data)},
        "machine": {**common.machine_info(),
                    **({k: hf[k] for k in ("torch", "transformers", "torch_threads")}
                       if hf else {})},
        "results": results})
    return results


if __name__ == "__main__":
    main()
