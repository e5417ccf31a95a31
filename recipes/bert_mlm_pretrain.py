"""Pretrain a BERT with masked-LM from scratch, or continue pretraining one on in-domain text;
export it as a TF Hub-format encoder (with an `mlm` sub-object) + preprocessor that
bert_text_classifier loads.

Default: from scratch on BBC News article text (the train split; 5% of its articles held out by text
hash): a WordPiece vocabulary of about 4,000 tokens learned from the corpus, a 2-layer 256-wide BERT
(4 heads) whose first layer starts attending to each piece's neighbours (--model.init=local;
BERT's random weights: --model.init=random), 128-token windows, 60% of whole words masked (80%
[MASK] / 10% random / 10% kept; BERT's 15% of pieces: --model.mask_rate=0.15
--model.whole_word=false --model.max_predictions=20), AdamW 1e-3 with warm-up, 7 epochs.

    python -m recipes.bert_mlm_pretrain
    python -m recipes.bert_mlm_pretrain --model.encoder=minilm_l6 --train.learning_rate=5e-5 \\
        --model.mask_rate=0.15 --model.whole_word=false --model.max_predictions=20  # BERT's
    python -m recipes.bert_mlm_pretrain --model.implementation=keras \\
        --runtime.precision=mixed_bfloat16       # bfloat16 reaches the encoder
    python -m recipes.bert_mlm_pretrain --data.name=imdb_reviews --data.split=unsupervised
    python -m recipes.bert_mlm_pretrain --data.path=my_corpus/ --data.document=file
"""

import dataclasses
import os
import sys

import tfpretrain as tp

option = tp.config.option


@dataclasses.dataclass
class MlmModelConfig:
    encoder: str = option("'' = a new BERT trained from scratch with a WordPiece vocabulary "
                          "learned from the corpus; else the BERT to continue pretraining: preset, "
                          "local dir, gs:// path or hub URL", "")
    preprocessor: str = option("the encoder's TF Hub-format preprocessor ('' = the preset's)", "")
    vocab_size: int = option("WordPiece vocabulary size to learn (from scratch)", 4000)
    lower_case: bool = option("lower-case and strip accents before tokenizing (from scratch)", True)
    num_layers: int = option("transformer layers (from scratch)", 2)
    hidden_dim: int = option("hidden width (from scratch)", 256)
    num_heads: int = option("attention heads (from scratch)", 4)
    intermediate_dim: int = option("feed-forward width (from scratch)", 1024)
    dropout: float = option("dropout inside the new BERT (from scratch)", 0.0)
    init: str = option("initial weights of the new BERT (from scratch): 'random' (BERT's) or "
                       "'local' (layer 0 starts attending to each piece's neighbours, which "
                       "masked LM otherwise takes most of its budget to find; "
                       "docs/pretraining.md)", "local", ("random", "local"))
    seq_length: int = option("tokens per window; documents are cut into windows of this length",
                             128)
    mask_rate: float = option("fraction of words (or pieces) selected for prediction: 60% of "
                              "whole words gives a from-scratch BERT more topical features than "
                              "BERT's 15% of pieces (docs/pretraining.md)", 0.6)
    max_predictions: int = option("most masked positions scored per window", 77)
    whole_word: bool = option("mask all pieces of a selected word together (false: pieces)", True)
    tie_embeddings: bool = option("score the masked tokens against the word-embedding table "
                                  "(BERT's tied head); false: the head has its own output table",
                                  True)
    implementation: str = tp.config.implementation_option()


@dataclasses.dataclass
class MlmExportConfig:
    enabled: bool = option("export the encoder (with its mlm sub-object) and preprocessor in TF "
                           "Hub format", True)


MlmPretrainConfig = tp.config.recipe_config(
    "bert_mlm_pretrain", data=tp.MlmDataConfig, model=MlmModelConfig, export=MlmExportConfig,
    train_defaults={"epochs": 7, "learning_rate": 1e-3, "checkpoint_every": 200})


def main(cfg):
    run = tp.Run(cfg, "bert_mlm_pretrain")
    corpus = tp.make_corpus(cfg.data)
    scratch = not cfg.model.encoder
    pair = (tp.build_new_bert(cfg.model, corpus["train"], os.path.join(run.workdir, "initial"),
                              seed=cfg.train.seed)
            if scratch else (cfg.model.encoder, cfg.model.preprocessor))
    m = cfg.model
    with run.scope():
        encoder = tp.load_bert_encoder(*pair, trainable=True, seq_length=m.seq_length,
                                       implementation=m.implementation)
        vocab_file = encoder.preprocessor.vocab_file.asset_path.numpy().decode()
        masking = tp.mlm.Masking.from_vocabulary(vocab_file, seq_length=encoder.seq_length,
                                                 mask_rate=m.mask_rate, whole_word=m.whole_word,
                                                 max_predictions=m.max_predictions)
        model, head = tp.mlm.build_mlm_model(encoder.layer, masking.vocab_size,
                                             tied=m.tie_embeddings)
    windows = run.cache({s: tp.mlm.make_windows(d, encoder.preprocessor, encoder.seq_length)
                         for s, d in corpus.items()})
    seed = cfg.train.seed

    def batches(epoch, skip):
        return tp.mlm.make_mlm_batches(windows["train"], masking, cfg.train.global_batch_size,
                                       seed=seed + epoch, shuffle_seed=seed + epoch,
                                       shuffle_buffer=cfg.data.shuffle_buffer, skip_batches=skip)

    # The held-out windows are masked once (fixed seed) and kept: start and end see the same masks.
    heldout = list(tp.mlm.make_mlm_batches(windows["heldout"], masking,
                                           cfg.train.global_batch_size, seed=seed))
    token, baseline = tp.mlm.most_frequent_token_baseline(windows["train"], heldout, masking)
    start = tp.mlm.restart_safe_evaluation(os.path.join(run.workdir, "start.json"), model, heldout)
    print(f"held-out masked tokens: start accuracy {start['accuracy']:.4f} loss "
          f"{start['loss']:.4f}; most-frequent-token baseline {baseline:.4f}", flush=True)
    state = run.train(model, batches, loss_fn=tp.mlm.masked_lm_loss,
                      evaluate=lambda trained: tp.mlm.evaluate_mlm(trained, heldout),
                      details=f"windows {run.split_sizes} | vocabulary {masking.vocab_size} | "
                              f"seq_length {masking.seq_length} | "
                              + ("from scratch" if scratch else f"continued from {m.encoder}")
                              + f" | {encoder.implementation}")
    end = tp.mlm.evaluate_mlm(model, heldout)
    print(f"held-out masked tokens: end accuracy {end['accuracy']:.4f} loss {end['loss']:.4f} "
          f"(start {start['accuracy']:.4f} / {start['loss']:.4f}, baseline {baseline:.4f})",
          flush=True)
    if scratch:
        run.artifacts["initial"] = "initial/ (the untrained BERT: a random-init baseline)"
    results = {"mode": "scratch" if scratch else "continued", "heldout_start": start,
               "heldout_end": end, "most_frequent_token": {"token_id": token, "accuracy": baseline},
               "windows": run.split_sizes, "vocab_size": masking.vocab_size}
    new_bert = f"new BERT (`{pair[0]}`), {m.num_layers} layers x {m.hidden_dim} wide"
    return run.finish(
        model, state, results=results,
        export=tp.Export(write=lambda path: tp.mlm.export_pretrained(encoder, head, path),
                         describe="export/ (encoder with .mlm, preprocessor, vocab.txt)"),
        report=lambda metrics: tp.report.write_mlm_report(
            run.workdir, metrics, title=f"{metrics['mode']} on {cfg.data.path or cfg.data.name}",
            encoder=tp.zoo.describe(m.encoder) if m.encoder else new_bert,
            steps_per_epoch=run.steps_per_epoch, recipe="bert_mlm_pretrain"))


if __name__ == "__main__":
    sys.exit(tp.cli.run(main, MlmPretrainConfig(), description=__doc__))
