"""Fine-tune a BERT-family encoder on labelled texts or text pairs and export it on raw strings.

Labels are classes, numbers (regression) or sets of classes (multi-label, `|`-separated in
files), inferred from the data unless --model.task says.

Default: the offline all-MiniLM-L6-v2 preset (minilm_l6) on BBC News (5 topics), fine-tuned end to
end (256 tokens with head+tail truncation, layer-wise learning rates decaying 0.8 per layer; the
automatic budget picks 2 epochs for BBC News); measured 97.52% test accuracy in about 10 minutes on
a 2-core CPU.

    python -m recipes.bert_text_classifier
    python -m recipes.bert_text_classifier --data.name=glue/sst2 --data.test_split=
    python -m recipes.bert_text_classifier --model.encoder=<dir> --model.preprocessor=<dir>
    python -m recipes.bert_text_classifier --data.train_file=mrpc/train.tsv \\
        --data.text_key=sentence1,sentence2            # pairs: serving_default(text_a, text_b)
    python -m recipes.bert_text_classifier --data.train_file=stsb/train.tsv \\
        --data.text_key=sentence1,sentence2 --data.label_key=score    # regression
"""

import dataclasses
import os
import sys

import tfpretrain as tp

option = tp.config.option


@dataclasses.dataclass
class BertModelConfig(tp.config.BertEncoderConfig):
    seq_length: int = option("maximum tokens per example (batches are padded to their own longest "
                             "example); 0 = the preset's (256), else 256 or the encoder's "
                             "positions if fewer", 0)
    truncation: str = option("tokens kept of longer texts: 'head' (the first seq_length) or "
                             "'head_tail' (a quarter from the start, the rest from the end)",
                             "head_tail", tp.TRUNCATIONS)
    pooling: str = option("'mean' (masked mean of sequence_output) or 'pooled' (pooled_output)",
                          "mean", tp.POOLINGS)
    dropout: float = option("dropout before the classification layer", 0.1)
    case_segments: bool = option("single texts: give the word pieces of capitalised words "
                                 "segment id 1 (casing, which an uncased encoder cannot see)",
                                 False)
    task: str = tp.task_option()


TextClassifierConfig = tp.config.recipe_config(
    "bert_text_classifier", data=tp.TextDataConfig, model=BertModelConfig,
    # layer_decay 0.8: measured on SST-2, BBC News and HWU64 (docs/budget.md).
    train=tp.config.HeadFirstTrainConfig, train_defaults={"head_epochs": 0, "layer_decay": 0.8})


def main(cfg):
    run = tp.Run(cfg, "bert_text_classifier", multi_worker=True)
    m = cfg.model
    data = tp.load_text_data(cfg.data, m.task)
    run.task = tp.make_task(data.task, data.label_names)
    if cfg.export.tflite and data.task != "classification":
        raise tp.config.ConfigError("export.tflite scores single-label classifiers; this task "
                                    f"is {data.task}: set export.tflite=false")
    if m.case_segments and data.pairs:
        raise tp.config.ConfigError("model.case_segments is for single texts: a pair's segment "
                                    "ids already tell its two texts apart")
    with run.scope():
        encoder = tp.load_bert_encoder(m.encoder, m.preprocessor, m.trainable, m.seq_length,
                                       m.pooling, m.implementation, m.lora_rank)
        model = tp.build_bert_classifier(encoder.layer, run.task.num_classes, encoder.pooling,
                                         m.dropout, seed=cfg.train.seed)
    seq, datasets = encoder.seq_length, data.datasets
    examples = run.cache({s: tp.tokenize_texts(d, encoder.preprocessor, seq, m.truncation,
                                             m.case_segments)
                          for s, d in datasets.items()})

    def batches(split, epoch=None, skip=0):
        seed = None if epoch is None else cfg.train.seed + epoch
        return tp.make_batches(examples[split], cfg.train.global_batch_size, seq, seed,
                               cfg.data.shuffle_buffer, skip,
                               fixed_shapes=cfg.runtime.jit_compile)

    if cfg.train.head_epochs and m.trainable:
        tp.warm_up_head(run, model, batches("train"), validation=batches("validation")
                        if "validation" in examples else None, config=cfg.train)
    state = run.train(model, lambda epoch, skip: batches("train", epoch, skip),
                      validation=batches("validation") if "validation" in examples else None,
                      details=f"encoder {m.encoder}: {encoder.implementation} | "
                              f"seq_length {seq} | "
                              f"{run.task.describe_labels()}")
    split = "test" if "test" in datasets else "validation"
    texts = tp.decode_texts(t for t, _ in datasets[split].take(8).as_numpy_iterator())
    inputs = ("text_a", "text_b") if data.pairs else ("text",)
    export = tp.Export(
        write=lambda path: tp.export_text_classifier(model, None, path, encoder.preprocessor,
                                                     seq, m.truncation, run.task, inputs,
                                                     m.case_segments),
        check_inputs=texts, input_name=inputs, model_inputs=lambda batch: tp.pack_texts(
            encoder.preprocessor, tp.text_batch(batch), seq, m.truncation, m.case_segments),
        after=lambda _, results: _export_tflite(model, encoder, datasets, cfg, run, results))
    run.finish(model, state, test=batches("test") if "test" in examples else None, export=export,
               report={"title": f"Text classifier: {m.encoder} on "
                                f"{cfg.data.train_file or cfg.data.name}",
                       "encoder": {"encoder": tp.zoo.describe(m.encoder),
                                   "preprocessor": f"`{encoder.preprocessor_handle}`",
                                   "input": f"{seq} tokens, {m.truncation} truncation, "
                                            f"{encoder.pooling} pooling"
                                            + (", case segments" if m.case_segments else ""),
                                   "trainable parameters":
                                       f"{tp.count_parameters(model.trainable_variables):,}"},
                       "example_inputs": texts[:2]})


def _export_tflite(model, encoder, datasets, cfg, run, results):
    """The quantized TFLite models, their size and accuracy into ``results``."""
    if not cfg.export.tflite:
        return {}
    results["tflite"] = tp.tflite.export_and_score(
        model, os.path.join(run.workdir, "tflite"), encoder, datasets, cfg.model.truncation,
        cfg.export.tflite_calibration, cfg.train.seed, cfg.model.case_segments)
    return {"tflite": "tflite/"}


if __name__ == "__main__":
    sys.exit(tp.cli.run(main, TextClassifierConfig(), description=__doc__))
