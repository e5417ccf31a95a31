"""Classify texts with a Universal-Sentence-Encoder-style encoder (strings in, vectors out).

Default: the offline all-MiniLM-L6-v2 sentence encoder (minilm_l6_sentence), frozen, on BBC News:
each split is embedded once and cached (reused by later runs with the same encoder and data),
then an MLP head trains on the cache in seconds. --model.trainable=true fine-tunes end to end.
Either way the export takes raw strings and holds the encoder.

    python -m recipes.use_text_classifier
    python -m recipes.use_text_classifier --model.hidden_units= --model.dropout=0.2
    python -m recipes.use_text_classifier --model.trainable=true
    python -m recipes.use_text_classifier --model.encoder=https://tfhub.dev/google/universal-sentence-encoder/4
"""

import os
import sys

import keras
import tensorflow as tf

import tfpretrain as tp
from tfpretrain import cli, config as config_lib, files, zoo


def main(cfg):
    workdir = os.path.abspath(cfg.workdir)
    frozen = not cfg.model.trainable
    cfg.train.epochs = cfg.train.epochs or (30 if frozen else 3)
    cfg.train.learning_rate = cfg.train.learning_rate or (1e-3 if frozen else 1e-4)
    hidden = [int(u) for u in cfg.model.hidden_units.split(",") if u.strip()]
    config_lib.save_config(cfg, workdir)
    keras.utils.set_random_seed(cfg.train.seed)
    strategy = tp.build_strategy(cfg.runtime.strategy, cfg.runtime.tpu)
    tp.per_replica_batch_size(cfg.train.global_batch_size, strategy)
    datasets, label_names = tp.make_text_datasets(cfg.data)
    with strategy.scope():
        encoder = tp.load_sentence_encoder(cfg.model.encoder, cfg.model.trainable,
                                           cfg.model.signature, cfg.model.output_key)
        head = tp.build_classification_head(len(label_names), cfg.model.dropout, cfg.train.seed, hidden)
        head.build((None, encoder.dim))
        model = tp.build_sentence_classifier(encoder.layer, head)
    if frozen:  # the head trains alone, on embeddings computed once
        cache = cfg.embedding_cache or os.path.join(zoo.cache_dir(), "embeddings")
        print(f"embeddings of {cfg.model.encoder} (fingerprint {encoder.fingerprint}), cache {cache}")
        examples = {s: tf.data.Dataset.from_tensor_slices(tp.load_embeddings(encoder, d, cache, s)).cache()
                    for s, d in datasets.items()}
        trained = head
    else:
        examples = {s: d.cache() for s, d in datasets.items()}
        trained = model
    batch = cfg.train.global_batch_size

    def train_batches(epoch, skip):
        return (examples["train"].shuffle(cfg.data.shuffle_buffer, seed=cfg.train.seed + epoch,
                                          reshuffle_each_iteration=False)
                .batch(batch).skip(skip).prefetch(tf.data.AUTOTUNE))

    def eval_batches(split):
        return examples[split].batch(batch).prefetch(tf.data.AUTOTUNE)

    steps_per_epoch = sum(1 for _ in eval_batches("train"))
    total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    with strategy.scope():
        optimizer = tp.build_optimizer(cfg.train, total)
    trainable = sum(int(tf.size(v)) for v in trained.trainable_variables)
    print(f"replicas {strategy.num_replicas_in_sync} | global batch {batch} | steps/epoch "
          f"{steps_per_epoch} | total steps {total} | trainable parameters {trainable:,} | "
          f"encoder {cfg.model.encoder} ({'frozen, cached' if frozen else 'fine-tuned'}, "
          f"dim {encoder.dim}) | labels {label_names}", flush=True)
    evaluate = (lambda m: _scalars(tp.evaluate_classifier(m, eval_batches("validation"), label_names))
                ) if "validation" in examples else None
    state = tp.fit(trained, optimizer, train_batches, steps_per_epoch, cfg.train, strategy, workdir,
                   evaluate=evaluate)
    results = {"steps": state.step, "train_seconds": round(state.seconds, 1), "best_validation": state.best,
               "validation_history": state.history, "label_names": label_names}
    if "test" in examples:
        results["test"] = tp.evaluate_classifier(trained, eval_batches("test"), label_names)
        print(tp.format_report(results["test"], label_names))
    files.write_json(os.path.join(workdir, "metrics.json"), results)
    artifacts = {"config": "config.json", "metrics": "metrics.json", "checkpoints": "checkpoints/",
                 "tensorboard": "logs/"}
    if cfg.export.enabled:
        export_dir = os.path.join(workdir, "export")
        tp.export_text_classifier(model, label_names, export_dir)
        artifacts["export"] = "export/"
        split = "test" if "test" in datasets else "validation"
        texts = [t.decode() for t, _ in datasets[split].take(8).as_numpy_iterator()]
        tp.check_export(export_dir, texts, tf.nn.softmax(model(tf.constant(texts))).numpy())
    title = f"Text classifier: {cfg.model.encoder} on {cfg.data.train_file or cfg.data.name}"
    tp.write_model_card(workdir, title, results, label_names, "use_text_classifier")
    artifacts["model card"] = "README.md"
    tp.print_summary(workdir, results, artifacts)


def _scalars(metrics):
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


if __name__ == "__main__":
    sys.exit(cli.run(main, tp.SentenceClassifierConfig(), description=__doc__))
