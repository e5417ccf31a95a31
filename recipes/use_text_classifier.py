"""Classify texts or text pairs with a Universal-Sentence-Encoder-style encoder (strings in,
vectors out); labels are classes, numbers (regression) or sets of classes (multi-label).

Default: the offline all-MiniLM-L6-v2 sentence encoder (minilm_l6_sentence), frozen, on BBC News:
each split is embedded once and cached (reused by later runs with the same encoder and data),
then an MLP head trains on the cache in seconds. --model.trainable=true then fine-tunes the whole
model end to end, starting from that trained head. Either way the export takes raw strings and
holds the encoder. A pair is classified from Sentence-BERT's (u, v, |u-v|, u*v) of its two
embeddings; for a regression on pairs the run also prints the zero-training baseline, the cosine
of the two embeddings.

    python -m recipes.use_text_classifier
    python -m recipes.use_text_classifier --model.hidden_units= --model.dropout=0.2
    python -m recipes.use_text_classifier --model.trainable=true
    python -m recipes.use_text_classifier --model.encoder=https://tfhub.dev/google/universal-sentence-encoder/4
    python -m recipes.use_text_classifier --data.train_file=stsb/train.tsv \\
        --data.text_key=sentence1,sentence2 --data.label_key=score
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
    task: str = tp.task_option()


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
    run = tp.Run(cfg, "use_text_classifier")
    data = tp.load_text_data(cfg.data, cfg.model.task)
    run.task = tp.make_task(data.task, data.label_names)
    with run.scope():
        encoder = tp.load_sentence_encoder(cfg.model.encoder, cfg.model.trainable,
                                           cfg.model.signature, cfg.model.output_key)
        head = run.task.build_head(cfg.model.dropout, cfg.train.seed,
                                   [int(u) for u in cfg.model.hidden_units.split(",") if u])
        head.build((None, encoder.dim * (4 if data.pairs else 1)))
        model = tp.build_sentence_classifier(encoder.layer, head, data.pairs)
    # The head first trains alone on embeddings computed once; fine-tuning then starts from a
    # trained head, not a random one ("linear probing, then fine-tuning", Kumar et al. 2022).
    cache = cfg.embedding_cache or os.path.join(tp.zoo.cache_dir(), "embeddings")
    print(f"embeddings of {cfg.model.encoder} (dim {encoder.dim}, fingerprint "
          f"{encoder.fingerprint}), cache {cache}")
    embedded = {s: tp.load_embeddings(encoder, d, cache, s) for s, d in data.datasets.items()}
    trained, examples = head, run.cache({
        s: tf.data.Dataset.from_tensor_slices((tp.sentence_features(x), y))
        for s, (x, y) in embedded.items()})
    state = _train(run, head, examples, cfg.train.head_phase(),
                   os.path.join(run.workdir, "head") if cfg.model.trainable else run.workdir,
                   "training the head on cached embeddings")
    inputs = ("text_a", "text_b") if data.pairs else ("text",)
    if cfg.model.trainable:
        trained, examples = model, run.cache({s: d.map(lambda t, y: (_named(t, inputs), y))
                                              for s, d in data.datasets.items()})
        state = _train(run, model, examples, cfg.train, run.workdir,
                       "training the model end to end")
    split = "test" if "test" in data.datasets else "validation"
    texts = tp.decode_texts(t for t, _ in data.datasets[split].take(8).as_numpy_iterator())
    export = tp.Export(write=lambda path: tp.export_text_classifier(
        model, None, path, task=run.task, inputs=inputs), check_inputs=texts, input_name=inputs,
        model_inputs=lambda batch: _named(tp.text_batch(batch), inputs), model=model)
    training = ("end to end after the head" if cfg.model.trainable
                else "frozen; head on cached embeddings")
    run.finish(trained, state, export=export, results=_cosine_baseline(data, embedded),
               test=_batches(examples["test"], cfg.train) if "test" in examples else None,
               report={"title": f"Text classifier: {cfg.model.encoder} on "
                                f"{cfg.data.train_file or cfg.data.name}",
                       "encoder": {"encoder": tp.zoo.describe(cfg.model.encoder),
                                   "embedding": f"{encoder.dim}-d, fingerprint "
                                                f"{encoder.fingerprint}",
                                   "training": training},
                       "example_inputs": texts[:2]})


def _named(texts, inputs):
    """A pair of string batches as the model's inputs ``{text_a, text_b}``; one batch as is."""
    return dict(zip(inputs, texts)) if len(inputs) == 2 else texts


def _cosine_baseline(data, embedded):
    """Regression on pairs: the test scores of the untrained cosine of the two embeddings."""
    if not (data.pairs and data.task == "regression" and "test" in embedded):
        return {}
    baseline = tp.cosine_baseline(*embedded["test"])
    print(f"zero-training baseline, the cosine of the two embeddings: test Spearman "
          f"{baseline['spearman']:.4f}   Pearson {baseline['pearson']:.4f}", flush=True)
    return {"cosine_baseline": baseline}


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
        details=run.task.describe_labels())


if __name__ == "__main__":
    sys.exit(tp.cli.run(main, SentenceClassifierConfig(), description=__doc__))
