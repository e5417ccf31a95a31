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

option = tp.config.option


@dataclasses.dataclass
class SentenceModelConfig:
    encoder: str = option("preset name, local dir, gs:// path or tfhub.dev/Kaggle URL of a "
                          "sentence encoder (strings in, [batch, dim] out)", "minilm_l6_sentence")
    signature: str = option("call this signature instead of __call__ ('' = __call__ if the model "
                            "has one, else serving_default)", "")
    output_key: str = option("output to take when the model returns a dict ('' = its only one)", "")
    trainable: bool = option("fine-tune the encoder end to end (false: train the head on cached "
                             "embeddings)", False)
    hidden_units: str = option("comma-separated hidden layer sizes of the MLP head ('' = linear)",
                               "256")
    dropout: float = option("dropout before each head layer", 0.1)


@dataclasses.dataclass
class SentenceTrainConfig(tp.config.HeadFirstTrainConfig):
    epochs: int = option("passes of end-to-end fine-tuning (model.trainable=true only; 0 = auto "
                         "from the number of examples and classes, said at start-up)", 0)
    learning_rate: float = option("peak AdamW learning rate of end-to-end fine-tuning", 5e-5)


SentenceClassifierConfig = tp.config.recipe_config(
    "use_text_classifier", data=tp.TextDataConfig, model=SentenceModelConfig,
    train=SentenceTrainConfig,
    extra=[("embedding_cache", str, option("cached embeddings of a frozen encoder ('' = "
                                           "$TFPRETRAIN_CACHE/embeddings)", ""))])


def main(cfg):
    if cfg.export.tflite:
        raise tp.config.ConfigError(
            "export.tflite is for recipes.bert_text_classifier: a sentence encoder tokenises "
            "inside its SavedModel with TensorFlow Text ops that TFLite has neither as builtins "
            "nor as TF Select ops")
    hidden = [int(u) for u in cfg.model.hidden_units.split(",") if u.strip()]
    run = tp.Run(cfg, "use_text_classifier")
    datasets, label_names = tp.make_text_datasets(cfg.data)
    run.task = tp.SingleLabelClassification(label_names)
    with run.scope():
        encoder = tp.load_sentence_encoder(cfg.model.encoder, cfg.model.trainable,
                                           cfg.model.signature, cfg.model.output_key)
        head = run.task.build_head(cfg.model.dropout, cfg.train.seed, hidden)
        head.build((None, encoder.dim))
        model = tp.build_sentence_classifier(encoder.layer, head)
    # The head first trains alone on embeddings computed once; fine-tuning then starts from a
    # trained head, not a random one ("linear probing, then fine-tuning", Kumar et al. 2022).
    cache = cfg.embedding_cache or os.path.join(tp.zoo.cache_dir(), "embeddings")
    print(f"embeddings of {cfg.model.encoder} (dim {encoder.dim}, fingerprint "
          f"{encoder.fingerprint}), cache {cache}")
    embedded = {s: tf.data.Dataset.from_tensor_slices(tp.load_embeddings(encoder, d, cache, s))
                for s, d in datasets.items()}
    trained, examples = head, run.cache(embedded)
    state = _train(run, head, examples, cfg.train.head_phase(),
                   os.path.join(run.workdir, "head") if cfg.model.trainable else run.workdir,
                   "training the head on cached embeddings")
    if cfg.model.trainable:
        trained, examples = model, run.cache(datasets)
        state = _train(run, model, examples, cfg.train, run.workdir,
                       "training the model end to end")
    split = "test" if "test" in datasets else "validation"
    texts = [t.decode() for t, _ in datasets[split].take(8).as_numpy_iterator()]
    export = tp.Export(write=lambda path: tp.export_text_classifier(model, label_names, path),
                       check_inputs=texts, model_inputs=tf.constant, model=model)
    training = ("end to end after the head" if cfg.model.trainable
                else "frozen; head on cached embeddings")
    run.finish(trained, state, export=export,
               test=_batches(examples["test"], cfg.train) if "test" in examples else None,
               report={"title": f"Text classifier: {cfg.model.encoder} on "
                                f"{cfg.data.train_file or cfg.data.name}",
                       "encoder": {"encoder": tp.zoo.describe(cfg.model.encoder),
                                   "embedding": f"{encoder.dim}-d, fingerprint "
                                                f"{encoder.fingerprint}",
                                   "training": training},
                       "example_inputs": [t[:200] for t in texts[:2]]})


def _batches(examples, train_config, epoch=None, skip=0, shuffle_buffer=0):
    if epoch is not None:  # training: the order is a function of (seed, epoch) only
        examples = examples.shuffle(shuffle_buffer, seed=train_config.seed + epoch,
                                    reshuffle_each_iteration=False)
    return examples.batch(train_config.global_batch_size).skip(skip).prefetch(tf.data.AUTOTUNE)


def _train(run, trained, examples, train_config, workdir, what):
    validation = examples.get("validation")
    return run.train(
        trained, lambda epoch, skip: _batches(examples["train"], train_config, epoch, skip,
                                              run.cfg.data.shuffle_buffer),
        validation=None if validation is None else _batches(validation, train_config),
        train_config=train_config, workdir=workdir, what=what,
        details=f"labels {run.task.label_names}")


if __name__ == "__main__":
    sys.exit(tp.cli.run(main, SentenceClassifierConfig(), description=__doc__))
