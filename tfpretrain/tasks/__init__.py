"""Task types: what turns encoder outputs into an answer.

Each task type is one module with one class that supplies the same few things (see
``SingleLabelClassification`` in ``classification.py``, ``Regression`` in ``regression.py``,
``MultiLabelClassification`` in ``multilabel.py``; ``TokenClassification`` in ``tagging.py``,
whose answers are per word and whose export is ``export_token_classifier``):

* ``build_head(dropout, seed, hidden_units)``: the Keras head (layer name ``classifier``);
* ``loss(labels, outputs) -> (per-example losses, weights)``: what the training loop minimises;
* ``evaluate(model, batches) -> metrics``, ``metric_names``, ``best_metric`` and
  ``higher_is_better(metric)``: which validation metric picks the best checkpoint, and which way;
* ``calibrate(model, validation_batches) -> dict``: what the task chooses on the validation split
  after training (a multi-label decision threshold; nothing for the others);
* ``serving(scratch_dir) -> (outputs_fn, resources)``: the export's named outputs;
* ``format_metrics``, ``summary_line``, ``report_lines``, ``describe_labels``: the run's printed
  report, summary and ``report.md`` sections.

The training loop, the run seam, the export writer and the report take these from the task and
never branch on which task it is.
"""


def higher_is_better(metric: str) -> bool:
    """Losses are minimised; every other metric (accuracy, F1, correlations) is maximised."""
    return not metric.endswith("loss")


def make_task(task: str, label_names: list[str]):
    """The task type object for ``task`` (``classification``, ``regression``, ``multilabel``,
    as ``tfpretrain.load_text_data`` reports it; ``tagging``, with IOB2 tag names) over
    ``label_names``.

    Example:
        >>> make_task("multilabel", ["LOC", "PER"]).best_metric
        'micro_f1'
    """
    from tfpretrain.tasks.classification import SingleLabelClassification
    from tfpretrain.tasks.multilabel import MultiLabelClassification
    from tfpretrain.tasks.regression import Regression
    from tfpretrain.tasks.tagging import TokenClassification

    if task == "tagging":
        return TokenClassification(label_names)
    if task == "regression":
        return Regression()
    if task == "multilabel":
        return MultiLabelClassification(label_names)
    if task == "classification":
        return SingleLabelClassification(label_names)
    raise ValueError(f"unknown task {task!r}: classification, regression, multilabel or "
                     "tagging")
