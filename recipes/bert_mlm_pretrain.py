"""Pretrain a BERT with masked-LM from scratch, or continue pretraining one on in-domain text; export it
as a TF Hub-format encoder (with an `mlm` sub-object) + preprocessor that bert_text_classifier loads.

Default: from scratch on BBC News article text (the train split; 5% of its articles held out by text
hash): a WordPiece vocabulary of about 4,000 tokens learned from the corpus, a 2-layer 256-wide BERT
(4 heads), 128-token windows, 15% of pieces masked (80% [MASK] / 10% random / 10% kept), AdamW 2e-3
with warm-up, 7 epochs.

    python -m recipes.bert_mlm_pretrain
    python -m recipes.bert_mlm_pretrain --model.encoder=minilm_l6 --train.learning_rate=5e-5 --train.max_steps=200
    python -m recipes.bert_mlm_pretrain --data.name=imdb_reviews --data.split=unsupervised --model.whole_word=true
    python -m recipes.bert_mlm_pretrain --data.path=my_corpus/ --data.document=file
    python -m recipes.bert_text_classifier --model.encoder=runs/bert_mlm_pretrain/export/encoder \\
        --model.preprocessor=runs/bert_mlm_pretrain/export/preprocessor
"""

import json
import os
import shutil
import sys

import tensorflow as tf

import tfpretrain as tp
from tfpretrain import cli, config as config_lib, files, hub, zoo
from tfpretrain.data.corpus import make_corpus
from tfpretrain.hub_format import export_bert_encoder, export_bert_preprocessor
from tfpretrain.pretrain import mlm


def _new_bert(cfg, corpus, workdir):
    """From scratch: learns the vocabulary and writes the untrained BERT as a TF Hub-format pair
    under ``workdir/initial`` (kept: it is also the random-init baseline for fine-tuning)."""
    import keras_hub

    initial = os.path.join(workdir, "initial")
    vocab_file = os.path.join(workdir, "vocab.txt")
    if not os.path.exists(os.path.join(initial, "encoder")):  # a resumed run reuses the first one's
        print(f"learning a {cfg.model.vocab_size}-token WordPiece vocabulary from the corpus ...", flush=True)
        mlm.learn_wordpiece_vocabulary(corpus["train"], cfg.model.vocab_size, vocab_file, cfg.model.lower_case)
        export_bert_preprocessor(vocab_file, os.path.join(initial, "preprocessor"), cfg.model.lower_case,
                                 cfg.model.seq_length)
        with open(vocab_file) as f:
            vocab_size = sum(1 for _ in f)
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=vocab_size, num_layers=cfg.model.num_layers, num_heads=cfg.model.num_heads,
            hidden_dim=cfg.model.hidden_dim, intermediate_dim=cfg.model.intermediate_dim,
            dropout=cfg.model.dropout, max_sequence_length=cfg.model.seq_length)
        export_bert_encoder(backbone, os.path.join(initial, "encoder"))
    return os.path.join(initial, "encoder"), os.path.join(initial, "preprocessor")


def main(cfg):
    workdir = os.path.abspath(cfg.workdir)
    strategy = tp.start_run(cfg)
    corpus = make_corpus(cfg.data)
    scratch = not cfg.model.encoder
    encoder_handle, preprocessor_handle = (_new_bert(cfg, corpus, workdir) if scratch
                                           else (cfg.model.encoder, cfg.model.preprocessor))
    with strategy.scope():
        encoder = tp.load_encoder(encoder_handle, preprocessor_handle, trainable=True,
                                  seq_length=cfg.model.seq_length)
        vocab_file = encoder.preprocessor.vocab_file.asset_path.numpy().decode()
        masking = mlm.Masking.from_vocabulary(vocab_file, seq_length=encoder.seq_length,
                                              mask_rate=cfg.model.mask_rate, whole_word=cfg.model.whole_word,
                                              max_predictions=cfg.model.max_predictions)
        model, head = mlm.build_mlm_model(encoder.layer, masking.vocab_size)
    windows = {s: mlm.make_windows(d, encoder.preprocessor, encoder.seq_length).cache() for s, d in corpus.items()}
    batch, seed = cfg.train.global_batch_size, cfg.train.seed

    def train_batches(epoch, skip):
        return mlm.make_mlm_batches(windows["train"], masking, batch, seed=seed + epoch, shuffle_seed=seed + epoch,
                                    shuffle_buffer=cfg.data.shuffle_buffer, skip_batches=skip)

    # The held-out windows are masked once (fixed seed) and kept: start and end see the same masks.
    heldout = list(mlm.make_mlm_batches(windows["heldout"], masking, batch, seed=seed))
    sizes = {s: tp.count_examples(w) for s, w in windows.items()}  # also fills the caches
    steps_per_epoch = -(-sizes["train"] // batch)
    total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    with strategy.scope():
        optimizer = tp.build_optimizer(cfg.train, total)
    trainable = sum(int(tf.size(v)) for v in model.trainable_variables)
    print(f"replicas {strategy.num_replicas_in_sync} | global batch {batch} | windows train {sizes['train']} "
          f"held-out {sizes['heldout']} | steps/epoch {steps_per_epoch} | total steps {total} | trainable "
          f"parameters {trainable:,} | vocabulary {masking.vocab_size} | seq_length {masking.seq_length} | "
          f"{'from scratch' if scratch else 'continued from ' + cfg.model.encoder}", flush=True)
    token, baseline = mlm.most_frequent_token_baseline(windows["train"], heldout, masking)
    start = _restart_safe_start(workdir, model, heldout)
    print(f"held-out masked tokens: start accuracy {start['accuracy']:.4f} loss {start['loss']:.4f}; "
          f"most-frequent-token baseline {baseline:.4f}", flush=True)
    state = tp.fit(model, optimizer, train_batches, steps_per_epoch, cfg.train, strategy, workdir,
                   evaluate=lambda m: mlm.evaluate_mlm(m, heldout), loss_fn=mlm.masked_lm_loss,
                   steps_per_execution=cfg.runtime.steps_per_execution, jit_compile=cfg.runtime.jit_compile)
    end = mlm.evaluate_mlm(model, heldout)
    print(f"held-out masked tokens: end accuracy {end['accuracy']:.4f} loss {end['loss']:.4f} "
          f"(start {start['accuracy']:.4f} / {start['loss']:.4f}, baseline {baseline:.4f})", flush=True)
    results = {"steps": state.step, "mode": "scratch" if scratch else "continued",
               "heldout_start": start, "heldout_end": end, "best_validation": state.best,
               "most_frequent_token": {"token_id": token, "accuracy": baseline},
               "windows": sizes, "vocab_size": masking.vocab_size, "validation_history": state.history}
    files.write_json(os.path.join(workdir, "timing.json"), {"train_seconds": round(state.seconds, 1)})
    files.write_json(os.path.join(workdir, "metrics.json"), results)
    artifacts = {"config": "config.json", "metrics": "metrics.json", "checkpoints": "checkpoints/",
                 "tensorboard": "logs/"}
    if scratch:
        artifacts["initial"] = "initial/ (the untrained BERT: a random-init baseline)"
    if cfg.export.enabled:
        _export(encoder, head, vocab_file, os.path.join(workdir, "export"))
        artifacts["export"] = "export/ (encoder with .mlm, preprocessor, vocab.txt)"
    _write_report(workdir, cfg, results, encoder_handle, state, steps_per_epoch)
    artifacts["report"] = "report.md"
    tp.print_summary(workdir, results, artifacts, state.seconds)
    return results


def _restart_safe_start(workdir, model, heldout):
    """The held-out score before training; a resumed run reads the first run's from disk."""
    path = os.path.join(workdir, "start.json")
    if os.path.exists(path) and os.path.isdir(os.path.join(workdir, "checkpoints")):
        with open(path) as f:
            return json.load(f)
    start = mlm.evaluate_mlm(model, heldout)
    files.write_json(path, start)
    return start


def _export(encoder, head, vocab_file, export_dir):
    """The trained encoder with its mlm head, and a copy of the preprocessor it was trained with."""
    mlm.export_encoder_with_mlm(encoder.layer, head, os.path.join(export_dir, "encoder"))
    with files.atomic_directory(os.path.join(export_dir, "preprocessor")) as tmp:
        shutil.copytree(hub.resolve_handle(encoder.preprocessor_handle), tmp, dirs_exist_ok=True)
    shutil.copyfile(vocab_file, os.path.join(export_dir, "vocab.txt"))


def _write_report(workdir, cfg, results, encoder_handle, state, steps_per_epoch):
    from tfpretrain import report

    start, end, base = results["heldout_start"], results["heldout_end"], results["most_frequent_token"]
    train_loss = report.read_scalars(os.path.join(workdir, "logs", "train"), "loss")
    report.plot_learning_curves(train_loss, state.history, os.path.join(workdir, "learning_curves.png"),
                                steps_per_epoch)
    export = os.path.join(workdir, "export")
    lines = [f"# Masked-LM pretraining: {results['mode']} on {cfg.data.path or cfg.data.name}", "",
             f"Encoder: {zoo.describe(cfg.model.encoder) if cfg.model.encoder else f'new BERT (`{encoder_handle}`)'}, "
             f"{cfg.model.num_layers} layers x {cfg.model.hidden_dim} wide" * (not cfg.model.encoder)
             + f"; vocabulary {results['vocab_size']} tokens; windows {results['windows']}.",
             "", "| held-out masked tokens | accuracy | loss |", "|---|---|---|",
             f"| before training | {100 * start['accuracy']:.2f}% | {start['loss']:.4f} |",
             f"| after {results['steps']} steps | {100 * end['accuracy']:.2f}% | {end['loss']:.4f} |",
             f"| always the most frequent token (id {base['token_id']}) | {100 * base['accuracy']:.2f}% | |",
             "", "![learning curves](learning_curves.png)", "",
             f"Fine-tune it: `python -m recipes.bert_text_classifier --model.encoder={export}/encoder "
             f"--model.preprocessor={export}/preprocessor`", "",
             f"Rerun: `python -m recipes.bert_mlm_pretrain --config {workdir}/config.json`", ""]
    files.write_text(os.path.join(workdir, "report.md"), "\n".join(lines))


if __name__ == "__main__":
    sys.exit(cli.run(main, config_lib.MlmPretrainConfig(), description=__doc__))
