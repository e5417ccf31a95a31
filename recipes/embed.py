"""Embed a dataset split or a text file with a sentence encoder: .npy plus a metadata TSV.

Writes OUTPUT/embeddings.npy (float32 [N, dim], row i = text i), OUTPUT/metadata.tsv (text, and
the label when the data has one) and, with --projector=true, the files TensorBoard's embedding
projector reads (`tensorboard --logdir OUTPUT`).

    python -m recipes.embed                              # BBC News test split, minilm_l6_sentence
    python -m recipes.embed --text_file=notes.txt --output=runs/notes
    python -m recipes.embed --dataset=ag_news_subset --split=test[:1000] --projector=true
"""

import dataclasses
import os
import sys

import numpy as np

import tfpretrain as tp

option = tp.config.option


@dataclasses.dataclass
class EmbedConfig:
    output: str = option("output directory (embeddings.npy, metadata.tsv)", "runs/embed")
    encoder: str = option("sentence encoder: preset, local dir, gs:// path or hub URL",
                          "minilm_l6_sentence")
    signature: str = option("signature to call instead of __call__ ('' = automatic)", "")
    output_key: str = option("output to take from a dict-returning model ('' = its only one)", "")
    text_file: str = option("a text file, one text per line (instead of a dataset)", "")
    dataset: str = option("TFDS dataset name (when no text_file)", "bbc_news")
    split: str = option("TFDS split to embed; slicing works (test[:100])", "test")
    data_dir: str = option("TFDS data directory (default: "
                           "$TFPRETRAIN_CACHE/tensorflow_datasets)", "")
    text_key: str = option("text feature ('' = guess)", "")
    label_key: str = option("label feature, written to metadata.tsv when present", "label")
    batch_size: int = option("texts per encoder call", 64)
    projector: bool = option("also write TensorBoard projector files (tensorboard --logdir "
                             "OUTPUT)", False)


def main(cfg):
    tp.config.check_local_path("output", cfg.output)
    texts, labels, label_names = _read(cfg)
    encoder = tp.load_sentence_encoder(cfg.encoder, False, cfg.signature, cfg.output_key)
    print(f"embedding {len(texts)} texts with {cfg.encoder} (dim {encoder.dim})", flush=True)
    embeddings = tp.embed_texts(encoder, texts, cfg.batch_size, progress="embedding")
    output = os.path.abspath(cfg.output)
    rows = [_cell(t) for t in texts]
    if labels is not None:
        rows = ["text\tlabel"] + [f"{r}\t{label_names[y]}" for r, y in zip(rows, labels)]
    with tp.files.atomic_directory(output) as tmp:
        np.save(os.path.join(tmp, "embeddings.npy"), embeddings)
        with open(os.path.join(tmp, "metadata.tsv"), "w", encoding="utf-8") as f:
            f.write("\n".join(rows) + "\n")
        if cfg.projector:
            np.savetxt(os.path.join(tmp, "tensors.tsv"), embeddings, delimiter="\t", fmt="%.6g")
            with open(os.path.join(tmp, "projector_config.pbtxt"), "w") as f:
                f.write('embeddings {\n  tensor_name: "embeddings"\n  tensor_path: "tensors.tsv"\n'
                        '  metadata_path: "metadata.tsv"\n}\n')
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to "
          f"{output}/embeddings.npy and metadata.tsv"
          + (" (+ projector files)" if cfg.projector else ""))


def _read(cfg):
    if cfg.text_file:
        if not os.path.exists(cfg.text_file):
            raise FileNotFoundError(f"--text_file {cfg.text_file}: no such file")
        with open(cfg.text_file, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
        if not texts:
            raise ValueError(f"--text_file {cfg.text_file} holds no text")
        return [t.encode() for t in texts], None, None
    data = tp.TextDataConfig(name=cfg.dataset, data_dir=cfg.data_dir, text_key=cfg.text_key,
                              label_key=cfg.label_key, train_split=cfg.split,
                              validation_split="", test_split="")
    datasets, label_names = tp.make_text_datasets(data)
    texts, labels = [], []
    for text, label in datasets["train"].as_numpy_iterator():
        texts.append(text)
        labels.append(int(label))
    return texts, labels, label_names


def _cell(text):
    # One TSV cell: no tabs or newlines, and short enough to read in the projector.
    cell = " ".join(text.decode("utf-8", "replace").split())
    return cell[:200] or "(empty)"


if __name__ == "__main__":
    sys.exit(tp.cli.run(main, EmbedConfig(), description=__doc__))
