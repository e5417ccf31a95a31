"""The run report a person reads: ``report.md`` with its plots, written into the run
directory.

``report.md`` is the run's model card: data and splits, encoder, hyper-parameters, metrics with a
per-class table, the confusion matrix and learning curves (PNG, matplotlib), the export's
signatures read back from ``saved_model.pb``, how to serve it with TF Serving, how to rerun it.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
from typing import Any

import tensorflow as tf

from tfpretrain import plots
from tfpretrain.files import write_text


def read_scalars(logdir: str, tag: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` of scalar ``tag`` in the TensorBoard event files under ``logdir``.

    A resumed run writes some steps twice; the last value written for a step wins.
    """
    values = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")),
                       key=os.path.getmtime):
        try:
            # Event protos straight from the TFRecord file (summary_iterator is deprecated).
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if value.tag == tag:
                        values[event.step] = float(tf.make_ndarray(value.tensor))
        except tf.errors.DataLossError:  # a run killed mid-write leaves a truncated last record
            continue
    return sorted(values.items())


def describe_signatures(export_dir: str) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """``{name: (inputs, outputs)}`` of a SavedModel's signatures, each ``{key: "dtype [shape]"}``,
    read from ``saved_model.pb`` without loading the model."""
    from tensorflow.python.saved_model import loader_impl

    def spec(info):
        dims = ",".join("None" if d.size < 0 else str(d.size) for d in info.tensor_shape.dim)
        return f"{tf.dtypes.as_dtype(info.dtype).name} [{dims}]"

    signatures = loader_impl.parse_saved_model(export_dir).meta_graphs[0].signature_def
    return {name: ({k: spec(v) for k, v in sorted(s.inputs.items())},
                   {k: spec(v) for k, v in sorted(s.outputs.items())})
            for name, s in sorted(signatures.items()) if not name.startswith("__")}


def custom_ops(export_dir: str) -> list[str]:
    """Op types a SavedModel uses that core TensorFlow lacks (TensorFlow Text's, for a model
    that tokenises): what a model server must have linked in to load it."""
    from tensorflow.python.saved_model import loader_impl

    graph = loader_impl.parse_saved_model(export_dir).meta_graphs[0].graph_def
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    return sorted({n.op for n in nodes if not hasattr(tf.raw_ops, n.op)})


def _text_ops_note(ops):
    names = ", ".join(f"`{op}`" for op in ops)
    note = (f"The tokeniser is inside the graph and uses TensorFlow Text ops ({names}), so the "
            "model server must have TensorFlow Text's ops linked in, at a version that has all "
            "of them (tensorflow/serving#1490).")
    if "TFText>RoundRobinTrim" in ops:
        note += (" The `tensorflow/serving` images embed an older TensorFlow Text (2.12.1 when "
                 "tensorflow/serving#4057 was filed) that lacks `TFText>RoundRobinTrim`: if the "
                 "server logs \"Op type not registered\", build it with the TensorFlow Text of "
                 "the training environment.")
    return note


def table(header: list[str], rows: list) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _percent(value):
    return "—" if value is None else f"{100 * value:.2f}%"


def _value(metric, value):
    """A metric for a table: correlations and errors as they are, the others as percentages."""
    if value is None or metric not in plots.UNSCALED:
        return _percent(value)
    return f"{value:.4f}"


def write_report(workdir: str, *, task: Any, title: str, recipe: str, config: dict, results: dict,
                 split_sizes: dict, encoder: dict, steps_per_epoch: int | None = None,
                 example_inputs: list = ()) -> str:
    """Writes ``workdir/report.md`` with ``learning_curves.png`` and the task's own sections.

    Args:
        workdir: the run directory (holds ``config.json``, ``logs/``, maybe ``export/``).
        task: the run's task type (``tfpretrain.tasks``): its labels line, headline metrics and
            test sections (for classification the per-class table and ``confusion_matrix.png``).
        title: the report's heading.
        recipe: module name under ``recipes`` (for the rerun command).
        config: the run's config as a nested dict (``config.to_dict``).
        results: what the run wrote to ``metrics.json`` (``tflite``, ``comparison`` when present).
        split_sizes: ``{split: examples}``.
        encoder: ``{field: value}`` lines describing the encoder (name, source, parameters, ...).
        steps_per_epoch: for the epoch axis of the learning curves.
        example_inputs: two inputs for the example TF Serving request: strings, or
            ``{"b64": ...}`` for bytes inputs (encoded images).

    Returns:
        The path of ``report.md``.
    """
    test, best = results.get("test"), results.get("best_validation") or {}
    lines = [f"# {title}", "",
             f"Recipe `recipes.{recipe}`; report written {datetime.datetime.now():%Y-%m-%d %H:%M}, "
             f"TensorFlow {tf.__version__}.", "", "## Data", ""]
    data = config.get("data", {})
    source = data.get("train_file") or data.get("image_dir") or f"TFDS `{data.get('name')}`"
    lines += [f"Source: {source}. {task.describe_labels()}", ""]
    lines += table(["split", "examples"], list(split_sizes.items())) + [""]
    lines += ["## Encoder", ""] + [f"- {k}: {v}" for k, v in encoder.items()] + [""]
    lines += ["## Hyper-parameters", ""]
    lines += table(["setting", "value"], [(f"{section}.{k}", f"`{v}`")
                                          for section in ("model", "train", "runtime")
                                          for k, v in config.get(section, {}).items()]) + [""]
    lines += ["## Results", ""] + _results_lines(task, results, best, test)
    if test:
        lines += task.report_lines(test, workdir)
    train_loss = read_scalars(os.path.join(workdir, "logs", "train"), "loss")
    plots.plot_learning_curves(train_loss, results.get("validation_history", []),
                               os.path.join(workdir, "learning_curves.png"), steps_per_epoch,
                               config.get("train", {}).get("best_metric") or task.best_metric)
    lines += ["### Learning curves", "", "![learning curves](learning_curves.png)", "",
              "TensorBoard: `tensorboard --logdir " + os.path.join(workdir, "logs") + "`", ""]
    export_dir = os.path.join(workdir, "export")
    if os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        lines += _export_section(export_dir, example_inputs, results.get("tflite"), test)
    lines += ["## Reproduce", "", "```bash", f"python -m recipes.{recipe} --config "
              f"{workdir}/config.json --workdir <new directory>", "```", "",
              "Same config and seed give the same metrics (`metrics.json` is bit-identical across "
              "reruns and resumes on CPU; wall-clock times are in `timing.json`).", ""]
    path = os.path.join(workdir, "report.md")
    write_text(path, "\n".join(lines))
    return path


def _results_lines(task, results, best, test):
    rows = [(m, _value(m, best.get(m)), _value(m, test and test.get(m)))
            for m in task.headline_metrics]
    rows.append(("loss", f"{best['loss']:.4f}" if "loss" in best else "—",
                 f"{test['loss']:.4f}" if test else "—"))
    lines = table(["metric", f"validation (best, step {best.get('step', '—')})", "test"], rows)
    lines += ["", f"Training steps: {results['steps']}.", ""]
    if results.get("comparison"):  # transfer vs baselines with the same number of steps
        lines += ["### Compared with baselines (same number of steps)", ""]
        lines += table(["run", "test accuracy", "best validation accuracy", "steps"],
                       [(name, _percent(r["test_accuracy"]),
                         _percent(r["best_validation_accuracy"]), r["steps"])
                        for name, r in results["comparison"].items()]) + [""]
    return lines


def _export_section(export_dir, example_inputs, tflite, test):
    lines = ["## Export", "", "`export/` is a SavedModel; its signatures:", ""]
    signatures = describe_signatures(export_dir)
    rows = [(f"`{name}`", "<br>".join(f"`{k}`: {v}" for k, v in inputs.items()),
             "<br>".join(f"`{k}`: {v}" for k, v in outputs.items()))
            for name, (inputs, outputs) in signatures.items()]
    lines += table(["signature", "inputs", "outputs"], rows) + [""]
    names = list(signatures["serving_default"][0])
    instances = [dict(zip(names, (t[:200] for t in e))) if isinstance(e, (tuple, list))
                 else e[:200] if isinstance(e, str) else e for e in list(example_inputs)[:2]]
    body = json.dumps({"signature_name": "serving_default", "instances": instances},
                      ensure_ascii=False, indent=1)
    write_text(os.path.join(os.path.dirname(export_dir), "request.json"), body + "\n")
    text = not any(name.endswith("_bytes") for name in names)
    lines += ["### Serve it with TF Serving (REST)", ""]
    if text:
        lines += [_text_ops_note(custom_ops(export_dir)), ""]
    else:
        lines += ["Images travel base64-encoded (`{\"b64\": ...}`, TF Serving's convention for an "
                  "input whose name ends in `_bytes`); decoding and resizing happen inside the "
                  "graph.", ""]
    lines += ["```bash",
              f"mkdir -p /tmp/models/classifier && cp -r {export_dir} /tmp/models/classifier/1",
              "docker run -p 8501:8501 -v /tmp/models/classifier:/models/classifier "
              "-e MODEL_NAME=classifier tensorflow/serving",
              "curl -s http://localhost:8501/v1/models/classifier:predict -d @request.json",
              "```", "", "with `request.json` (written beside this report):", "", "```json", body,
              "```", "",
              "Locally, without a server:", "", "```bash"]
    if text:
        examples = ["a short news story about football", "a report on a football match"]
        exprs = ";".join(f'{name}=["{example}"]' for name, example in zip(names, examples))
        lines += [f"python -m tfpretrain.saved_model_cli run --dir {export_dir} --tag_set serve "
                  f"--signature_def serving_default --input_exprs '{exprs}'",
                  f"python -m tfpretrain.predict --model {export_dir} "
                  + " ".join(f'"{e}"' for e in examples[:len(names)])]
    else:
        lines += [f"python -m tfpretrain.predict --model {export_dir} image1.png image2.jpg"]
    lines += ["```", ""]
    if tflite:
        saved_bytes = sum(os.path.getsize(os.path.join(d, f))
                          for d, _, fs in os.walk(export_dir) for f in fs)
        lines += ["### TFLite", "",
                  "The TFLite models take token ids (`input_word_ids`, `input_mask`, "
                  "`input_type_ids`, int32 `[batch, width]`, any width up to the export's "
                  "sequence length: cut a request to its longest text and it costs only that) and"
                  " return logits; tokenise with the SavedModel's `preprocess` signature (or "
                  "`vocab.txt` beside them with a WordPiece tokeniser). `dynamic_range`: int8 "
                  "weights, float activations. `int8`: the fully-connected layers and embedding "
                  "lookups run in int8 (weights and activations, calibrated on a sample of the "
                  "training split); LayerNorm, softmax and GELU stay float, because int8 there "
                  "cost about 25 points on BBC News (see `tfpretrain/tflite.py`).", ""]
        rows = [("SavedModel (float32)", f"{saved_bytes / 2**20:.1f} MiB", "100%",
                 _percent(test and test["accuracy"]))]
        for variant, info in tflite.items():
            rows.append((f"`{info['file']}`", f"{info['bytes'] / 2**20:.1f} MiB",
                         f"{100 * info['bytes'] / saved_bytes:.0f}%",
                         _percent(info.get("accuracy"))))
        lines += table(["model", "size", "of SavedModel", "test accuracy"], rows) + [""]
    return lines


def write_mlm_report(workdir: str, results: dict, *, title: str, encoder: str,
                     steps_per_epoch: int | None, recipe: str = "bert_mlm_pretrain") -> str:
    """Writes ``workdir/report.md`` and ``learning_curves.png`` of a masked-LM pretraining run:
    held-out masked-token accuracy and loss before and after, against the most-frequent-token
    baseline, and how to fine-tune the export."""
    start, end = results["heldout_start"], results["heldout_end"]
    base = results["most_frequent_token"]
    train_loss = read_scalars(os.path.join(workdir, "logs", "train"), "loss")
    plots.plot_learning_curves(train_loss, results["validation_history"],
                               os.path.join(workdir, "learning_curves.png"), steps_per_epoch)
    export = os.path.join(workdir, "export")
    lines = [f"# Masked-LM pretraining: {title}", "",
             f"Encoder: {encoder}; vocabulary {results['vocab_size']} tokens; windows "
             f"{results['windows']}.", ""]
    lines += table(["held-out masked tokens", "accuracy", "loss"], [
        ("before training", _percent(start["accuracy"]), f"{start['loss']:.4f}"),
        (f"after {results['steps']} steps", _percent(end["accuracy"]), f"{end['loss']:.4f}"),
        (f"always the most frequent token (id {base['token_id']})", _percent(base["accuracy"]),
         "")])
    lines += ["", "![learning curves](learning_curves.png)", "",
              "Fine-tune it: `python -m recipes.bert_text_classifier "
              f"--model.encoder={export}/encoder --model.preprocessor={export}/preprocessor`", "",
              f"Rerun: `python -m recipes.{recipe} --config {workdir}/config.json`", ""]
    path = os.path.join(workdir, "report.md")
    write_text(path, "\n".join(lines))
    return path
