"""Embed a dataset split or a text file with a sentence encoder: .npy plus a metadata TSV.

Writes OUTPUT/embeddings.npy (float32 [N, dim], row i = text i), OUTPUT/metadata.tsv (text, and
the label when the data has one) and, with --projector=true, the files TensorBoard's embedding
projector reads (`tensorboard --logdir OUTPUT`).

    python -m recipes.embed                                  # BBC News test split, minilm_l6_sentence
    python -m recipes.embed --text_file=notes.txt --output=runs/notes
    python -m recipes.embed --dataset=ag_news_subset --split=test[:1000] --projector=true
"""

import os
import sys

import numpy as np

import tfpretrain as tp
from tfpretrain import cli, files
from tfpretrain.config import DataConfig


def main(cfg):
    texts, labels, label_names = _read(cfg)
    encoder = tp.load_sentence_encoder(cfg.encoder, False, cfg.signature, cfg.output_key)
    print(f"embedding {len(texts)} texts with {cfg.encoder} (dim {encoder.dim})", flush=True)
    embeddings = tp.embed_texts(encoder, texts, cfg.batch_size, progress="embedding")
    output = os.path.abspath(cfg.output)
    rows = [_cell(t) for t in texts]
    if labels is not None:
        rows = ["text\tlabel"] + [f"{r}\t{label_names[y]}" for r, y in zip(rows, labels)]
    with files.atomic_directory(output) as tmp:
        np.save(os.path.join(tmp, "embeddings.npy"), embeddings)
        with open(os.path.join(tmp, "metadata.tsv"), "w", encoding="utf-8") as f:
            f.write("\n".join(rows) + "\n")
        if cfg.projector:
            np.savetxt(os.path.join(tmp, "tensors.tsv"), embeddings, delimiter="\t", fmt="%.6g")
            with open(os.path.join(tmp, "projector_config.pbtxt"), "w") as f:
                f.write('embeddings {\n  tensor_name: "embeddings"\n  tensor_path: "tensors.tsv"\n'
                        '  metadata_path: "metadata.tsv"\n}\n')
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {output}/embeddings.npy "
          f"and metadata.tsv" + (" (+ projector files)" if cfg.projector else ""))


def _read(cfg):
    if cfg.text_file:
        if not os.path.exists(cfg.text_file):
            raise FileNotFoundError(f"--text_file {cfg.text_file}: no such file")
        with open(cfg.text_file, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
        if not texts:
            raise ValueError(f"--text_file {cfg.text_file} holds no text")
        return [t.encode() for t in texts], None, None
    data = DataConfig(name=cfg.dataset, data_dir=cfg.data_dir, text_key=cfg.text_key,
                      label_key=cfg.label_key, train_split=cfg.split, validation_split="", test_split="")
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
    sys.exit(cli.run(main, tp.EmbedConfig(), description=__doc__))
