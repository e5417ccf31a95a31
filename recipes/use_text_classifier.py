"""Classify texts with a Universal-Sentence-Encoder-style encoder (strings in, vectors out).

Default: the offline all-MiniLM-L6-v2 sentence encoder (minilm_l6_sentence), frozen, on BBC News:
each split is embedded once and cached (reused by later runs with the same encoder and data),
then an MLP head trains on the cache in seconds. --model.trainable=true then fine-tunes the whole
model end to end, starting from that trained head. Either way the export takes raw strings and
holds the encoder.

    python -m recipes.use_text_classifier
    python -m recipes.use_text_classifier --model.hidden_units= --model.dropout=0.2
    python -m recipes.use_text_classifier --model.trainable=true
    python -m recipes.use_text_classifier --model.encoder=https://tfhub.dev/google/universal-sentence-encoder/4
"""

import dataclasses
import os
import sys

import tensorflow as tf

import tfpretrain as tp
from tfpretrain import cli, config as config_lib, files, zoo


def main(cfg):
    if cfg.export.tflite:
        raise config_lib.ConfigError(
            "export.tflite is for recipes.bert_text_classifier: a sentence encoder tokenises inside its "
            "SavedModel with TensorFlow Text ops that TFLite has neither as builtins nor as TF Select ops")
    workdir = os.path.abspath(cfg.workdir)
    hidden = [int(u) for u in cfg.model.hidden_units.split(",") if u.strip()]
    strategy = tp.start_run(cfg)
    datasets, label_names = tp.make_text_datasets(cfg.data)
    with strategy.scope():
        encoder = tp.load_sentence_encoder(cfg.model.encoder, cfg.model.trainable,
                                           cfg.model.signature, cfg.model.output_key)
        head = tp.build_classification_head(len(label_names), cfg.model.dropout, cfg.train.seed, hidden)
        head.build((None, encoder.dim))
        model = tp.build_sentence_classifier(encoder.layer, head)
    # The head first trains alone on embeddings computed once; fine-tuning then starts from a
    # trained head, not a random one ("linear probing, then fine-tuning", Kumar et al. 2022).
    cache = cfg.embedding_cache or os.path.join(zoo.cache_dir(), "embeddings")
    print(f"embeddings of {cfg.model.encoder} (dim {encoder.dim}, fingerprint {encoder.fingerprint}), "
          f"cache {cache}")
    cached = {s: tf.data.Dataset.from_tensor_slices(tp.load_embeddings(encoder, d, cache, s)).cache()
              for s, d in datasets.items()}
    head_config = dataclasses.replace(cfg.train, epochs=cfg.train.head_epochs,
                                      learning_rate=cfg.train.head_learning_rate)
    head_dir = os.path.join(workdir, "head") if cfg.model.trainable else workdir
    state = _train(head, cached, head_config, strategy, head_dir, label_names, "head on cached embeddings",
                   cfg.data.shuffle_buffer, cfg.runtime)
    trained, examples = head, cached
    if cfg.model.trainable:
        trained, examples = model, {s: d.cache() for s, d in datasets.items()}
        state = _train(model, examples, cfg.train, strategy, workdir, label_names, "model end to end",
                       cfg.data.shuffle_buffer, cfg.runtime)
    # metrics.json is a pure function of config and data (bit-identical across reruns and
    # resumes); wall-clock times go to timing.json.
    results = {"steps": state.step, "best_validation": state.best, "validation_history": state.history,
               "label_names": label_names}
    files.write_json(os.path.join(workdir, "timing.json"), {"train_seconds": round(state.seconds, 1)})
    if "test" in examples:
        results["test"] = tp.evaluate_classifier(trained, _batches(examples["test"], cfg.train), label_names)
        print(tp.format_report(results["test"], label_names))
    files.write_json(os.path.join(workdir, "metrics.json"), results)
    artifacts = {"config": "config.json", "metrics": "metrics.json", "timing": "timing.json",
                 "checkpoints": "checkpoints/", "tensorboard": "logs/"}
    split = "test" if "test" in datasets else "validation"
    texts = [t.decode() for t, _ in datasets[split].take(8).as_numpy_iterator()]
    if cfg.export.enabled:
        export_dir = os.path.join(workdir, "export")
        tp.export_text_classifier(model, label_names, export_dir)
        artifacts["export"] = "export/"
        tp.check_export(export_dir, texts, tf.nn.softmax(model(tf.constant(texts))).numpy())
    tp.write_report(
        workdir, title=f"Text classifier: {cfg.model.encoder} on {cfg.data.train_file or cfg.data.name}",
        recipe="use_text_classifier", config=config_lib.to_dict(cfg), results=results,
        label_names=label_names, split_sizes={s: tp.count_examples(d) for s, d in cached.items()},
        encoder={"encoder": zoo.describe(cfg.model.encoder),
                 "embedding": f"{encoder.dim}-d, fingerprint {encoder.fingerprint}",
                 "training": "end to end after the head" if cfg.model.trainable else "frozen; head on cached embeddings"},
        steps_per_epoch=None, example_inputs=[t[:200] for t in texts[:2]])
    artifacts["report"] = "report.md"
    tp.print_summary(workdir, results, artifacts, state.seconds)


def _batches(examples, train_config, epoch=None, skip=0, shuffle_buffer=0):
    if epoch is not None:  # training: the order is a function of (seed, epoch) only
        examples = examples.shuffle(shuffle_buffer, seed=train_config.seed + epoch,
                                    reshuffle_each_iteration=False)
    return examples.batch(train_config.global_batch_size).skip(skip).prefetch(tf.data.AUTOTUNE)


def _train(trained, examples, train_config, strategy, workdir, label_names, what, shuffle_buffer, runtime):
    steps_per_epoch = sum(1 for _ in _batches(examples["train"], train_config))
    total = train_config.max_steps or train_config.epochs * steps_per_epoch
    with strategy.scope():
        optimizer = tp.build_optimizer(train_config, total)
    trainable = sum(int(tf.size(v)) for v in trained.trainable_variables)
    print(f"training the {what}: replicas {strategy.num_replicas_in_sync} | global batch "
          f"{train_config.global_batch_size} | steps/epoch {steps_per_epoch} | total steps {total} | "
          f"trainable parameters {trainable:,} | labels {label_names}", flush=True)
    evaluate = None
    if "validation" in examples:
        evaluate = lambda m: tp.evaluate_classifier(  # noqa: E731
            m, _batches(examples["validation"], train_config), label_names)
    def train_batches(epoch, skip):
        return _batches(examples["train"], train_config, epoch, skip, shuffle_buffer)

    return tp.fit(trained, optimizer, train_batches, steps_per_epoch, train_config, strategy, workdir,
                  evaluate=evaluate, steps_per_execution=runtime.steps_per_execution,
                  jit_compile=runtime.jit_compile)


if __name__ == "__main__":
    sys.exit(cli.run(main, tp.SentenceClassifierConfig(), description=__doc__))
