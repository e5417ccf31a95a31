"""The hand-over from masked-LM pretraining to fine-tuning, measured link by link.

For a ``recipes.bert_mlm_pretrain`` work directory (its ``export/``, ``initial/`` and
``metrics.json``), prints:

1. **Start weights**: held-out masked-token accuracy of the export's own ``mlm`` and of an MLM
   model built on ``load_bert_encoder(export)`` (the fine-tuning side's loader, both
   implementations) with the export's head: all three must equal the recipe's ``heldout_end``.
2. **Pooler**: whether masked LM ever trained ``pooled_output``'s dense layer.
3. **Features**: test accuracy of a logistic regression on frozen features (all training
   articles, standardised), per pooling and layer, for the export and for ``initial/``; beside a
   bag of word pieces and a random projection of it to the encoder's width. Then the same probe
   trained on 1, 10 and 50 articles per class (``label_curves``' subsets, mean of 5 seeds).
4. **Embedding geometry**: mean pairwise cosine of frequent, mid-frequency and rare pieces' input
   embeddings, the share of variance on the top principal direction, row norms.
5. **What the neighbours give**: held-out masked-token accuracy of a count model (naive Bayes over
   the visible pieces at offsets -1..1 and -3..3, counts from the training windows) under the
   run's masking and under BERT's 15% of pieces: how much a model that reads only nearby
   visible pieces can reach, beside the transformer's and the most-frequent-token baseline.

    python -m benchmarks.mlm_handover runs/bert_mlm_pretrain

Uses scikit-learn (a dependency: the digits builders read its bundled data) for the probes.
"""

import argparse
import json
import os
import sys

import numpy as np

from benchmarks.common import markdown_table

SEQ = 128


def _texts(dataset):
    pairs = list(dataset.as_numpy_iterator())
    return [t for t, _ in pairs], np.array([y for _, y in pairs])


def start_weights(workdir):
    """Link 1: ``[(what, accuracy, loss)]`` on the recipe's held-out windows and masks."""
    import tensorflow as tf

    import tfpretrain as tp

    export = os.path.join(workdir, "export")
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    model_config, seed = config["model"], config["train"]["seed"]
    data = tp.MlmDataConfig(**config["data"])
    loaded = tp.load_bert_encoder(f"{export}/encoder", f"{export}/preprocessor",
                                  seq_length=model_config["seq_length"])
    masking = tp.mlm.Masking.from_vocabulary(
        f"{export}/vocab.txt", seq_length=loaded.seq_length,
        mask_rate=model_config["mask_rate"], whole_word=model_config["whole_word"],
        max_predictions=model_config["max_predictions"])
    windows = tp.mlm.make_windows(tp.make_corpus(data)["heldout"], loaded.preprocessor,
                                  loaded.seq_length).cache()
    heldout = list(tp.mlm.make_mlm_batches(windows, masking,
                                           config["train"]["global_batch_size"], seed=seed))
    with open(os.path.join(workdir, "metrics.json")) as f:
        end = json.load(f)["heldout_end"]
    rows = [("recipe's heldout_end (metrics.json)", end["accuracy"], end["loss"])]
    saved = tf.saved_model.load(f"{export}/encoder")
    score = tp.mlm.evaluate_mlm(
        lambda inputs, training=False: saved.mlm(inputs, training=training)["mlm_logits"], heldout)
    rows.append(("export's own `mlm`", score["accuracy"], score["loss"]))
    head_weights = saved.mlm.variables[len(saved.variables):]
    for implementation in ("saved_model", "keras"):
        encoder = tp.load_bert_encoder(f"{export}/encoder", f"{export}/preprocessor",
                                       seq_length=loaded.seq_length,
                                       implementation=implementation)
        tied = not any("output_embeddings" in w.name for w in head_weights)
        model, head = tp.mlm.build_mlm_model(encoder.layer, masking.vocab_size, tied=tied)
        for weight, value in zip(head.weights, head_weights):
            weight.assign(value)
        score = tp.mlm.evaluate_mlm(model, heldout)
        rows.append((f"`load_bert_encoder(export, implementation={implementation})` + the "
                     "export's head", score["accuracy"], score["loss"]))
    return rows


def count_model_accuracy(train_windows, heldout, vocab_size, offsets, alpha=20.0):
    """Held-out masked-token accuracy of predicting each masked piece from the visible pieces at
    ``offsets`` around it: naive Bayes, ``argmax_x log p(x) + sum_o log p(x | piece at o) / p(x)``,
    counts from ``train_windows`` (piece-id arrays), each conditional smoothed towards ``p(x)``
    with ``alpha`` pseudo-counts. ``heldout``: the recipe's masked batches (numpy or tensors);
    positions that are masked, padding, ``[CLS]`` and ``[SEP]`` are not read. Ids below 5 (the
    special pieces) are never predicted."""
    unigram = np.ones(vocab_size)
    pairs = {o: np.zeros((vocab_size, vocab_size), np.float32) for o in offsets}
    for window in train_windows:
        unigram += np.bincount(window, minlength=vocab_size)[:vocab_size]
        for o, table in pairs.items():  # table[context, x]: x at i, context at i + o
            if o > 0:
                np.add.at(table, (window[o:], window[:-o]), 1)
            else:
                np.add.at(table, (window[:o], window[-o:]), 1)
    prior = unigram / unigram.sum()
    log_prior = np.log(prior).astype(np.float32)
    ratio = {o: (np.log((t + alpha * prior) / (t.sum(1, keepdims=True) + alpha)) - log_prior)
             .astype(np.float32) for o, t in pairs.items()}
    hits = total = 0
    for inputs, labels in heldout:
        ids = np.asarray(inputs["input_word_ids"])
        positions = np.asarray(inputs["masked_lm_positions"])
        targets = np.asarray(labels["masked_lm_ids"])
        weights = np.asarray(labels["masked_lm_weights"])
        lengths = (ids != 0).sum(1)
        hidden = np.zeros(ids.shape, bool)
        rows = np.repeat(np.arange(ids.shape[0]), positions.shape[1])
        hidden[rows, positions.ravel()] = weights.ravel() > 0
        for b, p in zip(*np.nonzero(weights > 0)):
            score = log_prior.copy()
            for o in offsets:
                j = positions[b, p] + o
                if 1 <= j < lengths[b] - 1 and not hidden[b, j]:
                    score += ratio[o][ids[b, j]]
            score[:5] = -np.inf
            hits += int(score.argmax() == targets[b, p])
            total += 1
    return hits / max(total, 1)


def neighbours(workdir):
    """Link 5: ``[(masking, most frequent, count model +-1, count model +-3)]`` on the held-out
    windows, masked as the run masks them and as BERT does."""
    import tfpretrain as tp

    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    model, export = config["model"], os.path.join(workdir, "export")
    loaded = tp.load_bert_encoder(f"{export}/encoder", f"{export}/preprocessor",
                                  seq_length=model["seq_length"])
    corpus = tp.make_corpus(tp.MlmDataConfig(**config["data"]))
    windows = {split: tp.mlm.make_windows(corpus[split], loaded.preprocessor, loaded.seq_length)
               .cache() for split in ("train", "heldout")}
    train = [tokens.numpy() for tokens, _ in windows["train"]]
    rows = []
    for name, masking in (
            ("the run's", dict(mask_rate=model["mask_rate"], whole_word=model["whole_word"],
                               max_predictions=model["max_predictions"])),
            ("BERT's 15% of pieces", dict(mask_rate=0.15, whole_word=False,
                                          max_predictions=20))):
        masking = tp.mlm.Masking.from_vocabulary(f"{export}/vocab.txt",
                                                 seq_length=loaded.seq_length, **masking)
        heldout = list(tp.mlm.make_mlm_batches(windows["heldout"], masking,
                                               config["train"]["global_batch_size"],
                                               seed=config["train"]["seed"]))
        _, frequent = tp.mlm.most_frequent_token_baseline(windows["train"], heldout, masking)
        rows.append((name, frequent,
                     *(count_model_accuracy(train, heldout, masking.vocab_size, offsets)
                       for offsets in ((-1, 1), (-3, -2, -1, 1, 2, 3)))))
    return rows


def frozen_features(encoder_dir, *text_lists):
    """``[{feature: [N, width]}]`` of frozen-encoder features (one per list of texts, the encoder
    loaded once), the pooler's weights and the word-embedding table."""
    import tensorflow as tf

    import tfpretrain as tp

    loaded = tp.load_bert_encoder(f"{encoder_dir}/encoder", f"{encoder_dir}/preprocessor",
                                  trainable=False, seq_length=SEQ)
    table = tp.mlm.word_embeddings(loaded.layer, int(loaded.preprocessor.vocab_size.numpy()))
    results = []
    for texts in text_lists:
        features = {}
        for start in range(0, len(texts), 64):
            inputs = tp.pack_texts(loaded.preprocessor, tf.constant(texts[start:start + 64]),
                                   SEQ, "head_tail")
            outputs = loaded.layer(inputs, training=False)
            mask = tf.cast(inputs["input_mask"], tf.float32)[..., None]

            def mean(x, mask=mask):
                return (tf.reduce_sum(x * mask, 1) / tf.reduce_sum(mask, 1)).numpy()

            batch = {"mean of input embeddings": mean(tf.gather(table, inputs["input_word_ids"])),
                     "CLS (sequence_output[:, 0])": outputs["sequence_output"][:, 0].numpy(),
                     "pooled_output": outputs["pooled_output"].numpy(),
                     "mean of sequence_output": mean(outputs["sequence_output"])}
            for layer, output in enumerate(outputs.get("encoder_outputs", [])[:-1]):
                batch[f"mean of layer {layer} output"] = mean(output)
            for name, value in batch.items():
                features.setdefault(name, []).append(value)
        results.append({k: np.concatenate(v) for k, v in features.items()})
    pooler = {w.name: w.numpy() for w in loaded.layer.weights if "pooled_dense" in w.name
              or "pooler" in w.name}
    return results, pooler, table.numpy()


def probe(train, train_labels, test, test_labels):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    classifier = LogisticRegression(max_iter=5000).fit(scaler.transform(train), train_labels)
    return classifier.score(scaler.transform(test), test_labels)


def few_label_probes(train, train_labels, test, test_labels, counts=(1, 10, 50), seeds=5):
    """``{count: mean test accuracy}`` of ``probe`` trained on ``count`` examples per class,
    the subsets ``label_curves`` fine-tunes on (same seeds)."""
    from benchmarks.label_curves import sample_per_class

    return {count: np.mean([probe(train[i], train_labels[i], test, test_labels)
                            for i in (sample_per_class(train_labels, count, seed)
                                      for seed in range(seeds))])
            for count in counts}


def bags_of_pieces(encoder_dir, texts, vocab_size):
    """``[N, vocab_size]`` piece frequencies of each text's first ``SEQ`` tokens (as encoded)."""
    import tensorflow as tf

    import tfpretrain as tp

    preprocessor = tp.hub.load_saved_model(f"{encoder_dir}/preprocessor")
    bags = []
    for start in range(0, len(texts), 256):
        inputs = tp.pack_texts(preprocessor, tf.constant(texts[start:start + 256]), SEQ,
                               "head_tail")
        for ids, mask in zip(inputs["input_word_ids"].numpy(), inputs["input_mask"].numpy()):
            bag = np.bincount(ids[mask > 0], minlength=vocab_size)[:vocab_size]
            bags.append(bag / bag.sum())
    return np.array(bags)


def piece_counts(encoder_dir, texts, vocab_size):
    import tensorflow as tf

    import tfpretrain as tp

    preprocessor = tp.hub.load_saved_model(f"{encoder_dir}/preprocessor")
    counts = np.zeros(vocab_size)
    for start in range(0, len(texts), 256):
        ids = tp.pack_texts(preprocessor, tf.constant(texts[start:start + 256]), 512,
                            "head")["input_word_ids"].numpy()
        counts += np.bincount(ids.ravel(), minlength=vocab_size)[:vocab_size]
    return counts


def geometry(table, counts):
    """Mean pairwise cosine by frequency band, top principal direction's variance share."""
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    order = np.argsort(-counts)
    bands = {"frequent (ranks 5-204)": order[5:205], "mid (ranks 1000-1199)": order[1000:1200],
             "rare (200 pieces, ~20 occurrences)": order[-400:-200]}

    def mean_cosine(a, b=None):
        same = b is None
        b = a if same else b
        similarities = unit[a] @ unit[b].T
        if same:
            return (similarities.sum() - len(a)) / (len(a) * (len(a) - 1))
        return similarities.mean()

    values = np.linalg.svd(table - table.mean(0), compute_uv=False) ** 2
    row = {f"cos, {k}": mean_cosine(v) for k, v in bands.items()}
    row["cos, rare vs frequent"] = mean_cosine(bands["rare (200 pieces, ~20 occurrences)"],
                                               bands["frequent (ranks 5-204)"])
    row["top direction's variance share"] = values[0] / values.sum()
    row["row norm"] = float(np.linalg.norm(table, axis=1).mean())
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", help="a recipes.bert_mlm_pretrain work directory")
    args = parser.parse_args(argv)
    import tfpretrain as tp

    print("## 1. Start weights (held-out masked tokens)\n")
    print(markdown_table(["model", "accuracy", "loss"],
                         [(w, f"{100 * a:.2f}%", f"{loss:.4f}")
                          for w, a, loss in start_weights(args.workdir)]))
    data = tp.load_text_data(tp.TextDataConfig())
    (train, y_train), (test, y_test) = (_texts(data.datasets[s]) for s in ("train", "test"))
    results, few, geometries = {}, {}, {}
    means = ("mean of sequence_output", "mean of input embeddings")
    print("\n## 2. Pooler (`pooled_output`'s dense layer; masked LM has no task that trains it)")
    for name in ("initial", "export"):
        directory = os.path.join(args.workdir, name)
        (train_features, test_features), pooler, table = frozen_features(directory, train, test)
        results[name] = {k: probe(train_features[k], y_train, test_features[k], y_test)
                         for k in train_features}
        few[name] = {k: few_label_probes(train_features[k], y_train, test_features[k], y_test)
                     for k in means}
        counts = piece_counts(directory, train, table.shape[0])
        geometries[name] = geometry(table, counts)
        print(f"\n{name}: " + ", ".join(f"{k} std {v.std():.4f}" for k, v in pooler.items()))
    print("\n## 3. Linear probes on frozen features (BBC News test accuracy)\n")
    print(markdown_table(["features", "initial/", "export/"],
                         [(k, f"{100 * results['initial'][k]:.2f}%",
                           f"{100 * results['export'][k]:.2f}%") for k in results["export"]]))
    directory = os.path.join(args.workdir, "export")
    bags = [bags_of_pieces(directory, texts, table.shape[0]) for texts in (train, test)]
    projection = np.random.default_rng(0).normal(size=(table.shape[0], table.shape[1]))
    print(f"\nfor scale, on the same {SEQ} tokens: bag of word pieces "
          f"{100 * probe(bags[0], y_train, bags[1], y_test):.2f}%, a random "
          f"{table.shape[1]}-d projection of it "
          f"{100 * probe(bags[0] @ projection, y_train, bags[1] @ projection, y_test):.2f}%")
    counts = list(few["export"][means[0]])
    print("\nThe same probes on a few labelled articles per class (label_curves' subsets, mean of "
          "5 seeds):\n")
    print(markdown_table(["features", *(f"{name}, {c}/class" for name in few for c in counts)],
                         [(k, *(f"{100 * few[name][k][c]:.2f}%" for name in few for c in counts))
                          for k in means]))
    print("\n## 4. Input-embedding geometry\n")
    print(markdown_table(["", "initial/", "export/"],
                         [(k, f"{geometries['initial'][k]:.3f}", f"{geometries['export'][k]:.3f}")
                          for k in geometries["export"]]))
    print("\n## 5. What the neighbours give (held-out masked tokens; a count model reads the "
          "visible pieces at the offsets)\n")
    print(markdown_table(["masking", "most frequent token", "count model, ±1", "count model, ±3"],
                         [(name, *(f"{100 * a:.2f}%" for a in accuracies))
                          for name, *accuracies in neighbours(args.workdir)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
