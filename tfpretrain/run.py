"""The run seam: one life for every recipe's run — start, training phases, finish.

A recipe says what is specific to it (which data, which encoder, which task) and hands the rest to
a ``Run``:

* **start** (``Run(cfg, recipe, task)``): the ``tf.distribute`` strategy first (multi-worker
  training needs it before anything else touches TensorFlow), seeds, the precision policy, the
  global batch checked against the replicas, ``config.json`` on the chief;
* **phases** (``run.train(...)``, called once or more: a head phase, then end to end): steps per
  epoch counted from the pipeline, the optimizer and its schedule, the header line, the loop;
* **finish** (``run.finish(...)``): test evaluation, ``timing.json``, export and its fresh-process
  check, ``metrics.json``, ``report.md``, the summary with the path of every artifact.

Example:
    >>> run = Run(cfg, "bert_text_classifier", SingleLabelClassification(names))  # doctest: +SKIP
    >>> state = run.train(model, batches, validation=eval_batches)  # doctest: +SKIP
    >>> run.finish(model, state, test=eval_batches("test"), report={...})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# enable_op_determinism is public; its counterparts are not exported.
from tensorflow.python.framework import config as tf_config

from tfpretrain import budget
from tfpretrain import config as config_lib
from tfpretrain import report as report_lib
from tfpretrain.data.pipeline import count_examples
from tfpretrain.distribute import (
    build_strategy,
    describe_precision,
    float32_compute,
    is_chief,
    per_replica_batch_size,
    set_precision,
)
from tfpretrain.export import check_export, merge_lora, start_fresh_process
from tfpretrain.files import write_json
from tfpretrain.hub import unseeded_random_ops
from tfpretrain.optimizers import build_optimizer, peak_learning_rate
from tfpretrain.tasks import higher_is_better
from tfpretrain.train import TrainState, fit


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seeds Python, NumPy, TensorFlow and Keras; with ``deterministic`` also makes TensorFlow's
    ops deterministic, so two runs with the same seed end bit-identical on CPU.

    On GPU, determinism costs speed and a few ops without a deterministic kernel raise an error;
    pass ``deterministic=False`` there if that matters more than bit-identical reruns.

    Example:
        >>> set_seed(42)
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def start_run(cfg: Any, multi_worker: bool = False) -> tf.distribute.Strategy:
    """What every run does first; returns the ``tf.distribute`` strategy.

    Builds the strategy before anything else touches TensorFlow (MultiWorkerMirroredStrategy
    requires it), seeds, sets the precision policy, checks the global batch splits over the
    replicas, and writes ``config.json`` on the chief. ``multi_worker=True`` says the recipe
    writes its files on the chief only; other recipes refuse a cluster instead of letting every
    worker write the same files.

    Example:
        >>> strategy = start_run(cfg)  # doctest: +SKIP
    """
    config_lib.check_local_path("workdir", cfg.workdir)
    strategy = build_strategy(cfg.runtime.strategy, cfg.runtime.tpu)
    workers = 1
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        workers = strategy.extended._num_workers
    if workers > 1 and not multi_worker:
        raise ValueError(f"this recipe does not support multi-worker training yet ({workers} "
                         "workers in TF_CONFIG); run it on one host (one_device, mirrored) or use "
                         "recipes.bert_text_classifier, which does")
    set_seed(cfg.train.seed, cfg.runtime.deterministic)
    set_precision(cfg.runtime.precision)
    per_replica_batch_size(cfg.train.global_batch_size, strategy)
    if is_chief(strategy):
        config_lib.save_config(cfg, os.path.abspath(cfg.workdir))
    return strategy


def count_parameters(variables: list) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


@dataclasses.dataclass
class Export:
    """What a recipe exports and how the seam checks it.

    Attributes:
        write: ``f(directory)`` writes the SavedModel there.
        check_inputs: raw inputs (strings, or bytes such as encoded images) that the export
            serves in a fresh process (empty: no check) ...
        model_inputs: ... and ``f(check_inputs) -> model inputs``, so the check can compare with
            the in-memory model's outputs (``task.predict``).
        input_name: the ``serving_default`` input the check feeds (two names for pairs).
        model: the in-memory model the export serves, for the check (default: the model given to
            ``finish``; differs when the test split was scored on a head alone).
        describe: the summary's line for the export directory.
        after: ``f(export_dir, results) -> {artifact: path}`` for what follows the export
            (TFLite models, a preset install); it may add entries to ``results``.
    """

    write: Callable[[str], object]
    check_inputs: list = dataclasses.field(default_factory=list)
    model_inputs: Callable[[list], object] | None = None
    input_name: str | tuple[str, ...] = "text"
    model: keras.Model | None = None
    describe: str = "export/"
    after: Callable[[str, dict], dict] | None = None


class Run:
    """One run of a recipe, from start to summary (see the module docstring).

    Args:
        cfg: the recipe's config (``workdir``, ``train``, ``runtime``, ``export`` sections).
        recipe: the recipe's module name under ``recipes`` (for the report's rerun command).
        task: the task type (``tfpretrain.tasks``); None for objectives that bring their own loss
            and evaluation (masked LM). Set ``run.task`` later when it depends on the data (the
            run must start before any data is read).
        multi_worker: the recipe writes on the chief only, so it may run on a cluster.
    """

    def __init__(self, cfg: Any, recipe: str, task: Any = None, *,
                 multi_worker: bool = False) -> None:
        self.cfg, self.recipe = cfg, recipe
        self.task = task
        self.workdir = os.path.abspath(cfg.workdir)
        self.strategy = start_run(cfg, multi_worker)
        self.chief = is_chief(self.strategy)
        self.steps_per_epoch: int | None = None
        self.split_sizes: dict[str, int] = {}
        self.budget: dict = {}  # what train.epochs=0 decided (budget.plan), for metrics.json
        self.validation: tf.data.Dataset | None = None  # the last phase's, for task.calibrate
        self.artifacts = {"config": "config.json", "metrics": "metrics.json",
                          "timing": "timing.json", "checkpoints": "checkpoints/",
                          "tensorboard": "logs/"}

    @property
    def task(self) -> Any:
        return self._task

    @task.setter
    def task(self, task: Any) -> None:
        # An unknown train.best_metric is refused as soon as the task is known: before the
        # encoder loads or anything trains.
        if task is not None:
            _check_best_metric(task, self.cfg.train.best_metric)
        self._task = task

    def scope(self) -> Any:
        """``strategy.scope()``: build models and layers that train inside it."""
        return self.strategy.scope()

    def reseed(self) -> None:
        """Seeds again, as at the start (before building another model from scratch)."""
        set_seed(self.cfg.train.seed, self.cfg.runtime.deterministic)

    def cache(self, datasets: dict[str, tf.data.Dataset]) -> dict[str, tf.data.Dataset]:
        """Caches each split, counts its examples once (filling the cache) and declares the count,
        so batch pipelines built on it know their length without reading it again."""
        cached = {}
        for split, dataset in datasets.items():
            dataset = dataset.cache()
            self.split_sizes[split] = count_examples(dataset)
            cached[split] = dataset.apply(
                tf.data.experimental.assert_cardinality(self.split_sizes[split]))
        return cached

    def train(self, model: keras.Model, batches: Callable[[int, int], tf.data.Dataset], *,
              validation: tf.data.Dataset | None = None,
              evaluate: Callable[[keras.Model], dict] | None = None,
              loss_fn: Callable | None = None, train_config: Any = None, workdir: str | None = None,
              what: str | None = None, details: str = "",
              callbacks: list | None = None) -> TrainState:
        """One training phase of ``model`` on ``batches(epoch, skip)``; returns its state.

        Steps per epoch are the number of batches of epoch 0 (its cardinality when the pipeline
        knows it, else counted). ``validation`` batches are scored with the task (or pass
        ``evaluate(model) -> metrics``); ``train_config`` (default ``cfg.train``) and ``workdir``
        (default the run's) let a recipe run several phases; ``details`` ends the header line;
        ``callbacks`` are Keras callbacks (see ``fit``).
        """
        config = train_config or self.cfg.train
        if not config.best_metric and self.task is not None:
            config = dataclasses.replace(config, best_metric=self.task.best_metric)
        if validation is not None:
            evaluate = self._task_evaluation(validation, config)
            self.validation = validation
        self.steps_per_epoch = count_examples(batches(0, 0))
        examples = self.split_sizes.get("train",
                                        self.steps_per_epoch * config.global_batch_size)
        config, budget_line = budget.plan(config, self.steps_per_epoch, examples,
                                          getattr(self.task, "num_classes", 2),
                                          getattr(self.task, "min_epochs", budget.MIN_EPOCHS))
        total = config.total_steps(self.steps_per_epoch)
        with self.strategy.scope():
            optimizer = build_optimizer(config, total)
        trainable = count_parameters(model.trainable_variables)
        # The first training line starts "replicas ..." (logs and tests look for it); a named
        # phase says its name first.
        print(("" if what is None else f"{what}: ") + f"replicas "
              f"{self.strategy.num_replicas_in_sync} | global batch "
              f"{config.global_batch_size} | steps/epoch {self.steps_per_epoch} | total steps "
              f"{total} | trainable parameters {trainable:,}"
              + (f" | {details}" if details else ""), flush=True)
        scaled = peak_learning_rate(config)[1]
        if scaled:
            print(scaled, flush=True)
        if budget_line:
            print(budget_line, flush=True)
            self.budget = {"epochs": config.epochs, "eval_every": config.eval_every,
                           "early_stopping_patience": config.early_stopping_patience,
                           "chosen": budget_line}
        print(describe_precision(model), flush=True)
        self._allow_unseeded_random_ops(model)
        better = self.task.higher_is_better if self.task else higher_is_better
        return fit(model, optimizer, batches, self.steps_per_epoch, config, self.strategy,
                   workdir or self.workdir, evaluate,
                   loss_fn=_smoothed(loss_fn or self.task.loss, config.label_smoothing),
                   higher_is_better=better(config.best_metric),
                   steps_per_execution=self.cfg.runtime.steps_per_execution,
                   jit_compile=self.cfg.runtime.jit_compile, callbacks=callbacks)

    def train_phases(self, model: keras.Model, phases: list,
                     batches: Callable[[int, int], tf.data.Dataset], *,
                     validation: tf.data.Dataset | None = None, workdir: str | None = None
                     ) -> TrainState:
        """Trains ``model`` through ``phases``, each ``(what, train_config, subdirectory,
        before)``: ``before()`` runs first (e.g. unfreezes the encoder), then ``train`` in
        ``workdir/subdirectory``. Returns the last phase's state with every phase's steps and
        seconds added up."""
        state = None
        for what, train_config, subdir, before in phases:
            before()
            phase = self.train(model, batches, validation=validation, train_config=train_config,
                               workdir=os.path.join(workdir or self.workdir, subdir), what=what,
                               details=f"learning rate {train_config.learning_rate}")
            state = phase if state is None else dataclasses.replace(
                phase, step=state.step + phase.step, seconds=state.seconds + phase.seconds)
        return state

    def evaluate(self, model: keras.Model, batches: tf.data.Dataset) -> dict:
        """The task's metrics of ``model`` on ``batches``, printed as its report."""
        metrics = self.task.evaluate(model, batches)
        print(self.task.format_metrics(metrics), flush=True)
        return metrics

    def compare(self, outcomes: dict) -> dict:
        """Prints and returns how runs of the same task compared (``{name: (state, results)}``,
        e.g. transfer against baselines trained for as many steps)."""
        comparison = {name: {"test_accuracy": result.get("test", {}).get("accuracy"),
                             "best_validation_accuracy": state.best.get("accuracy"),
                             "steps": state.step}
                      for name, (state, result) in outcomes.items()}
        print("\nTransfer vs baselines (same number of steps)")
        print(f"  {'run':<10}{'test accuracy':>15}{'best validation':>17}{'steps':>7}")
        for name, r in comparison.items():
            test = "—" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
            print(f"  {name:<10}{test:>15}{r['best_validation_accuracy'] or float('nan'):>17.4f}"
                  f"{r['steps']:>7}")
        return comparison

    def _allow_unseeded_random_ops(self, model):
        """Op determinism refuses random ops without a seed (dropout in SavedModels traced
        without one); such a run trains with it off, and says what that costs."""
        ops = unseeded_random_ops(model) if tf_config.is_op_determinism_enabled() else []
        if ops:
            tf_config.disable_op_determinism()
            print(f"note: {', '.join(ops)} draw random numbers without a seed (a SavedModel "
                  "traced without one, as TF Model Garden's export_tfhub writes them), which "
                  "TensorFlow's op determinism refuses; this run trains with it off: a rerun with "
                  "the same seed draws other dropout masks, and a resumed run restarts at the "
                  "exact step and batch but is not bit-identical", flush=True)

    def _task_evaluation(self, validation, config):
        _check_best_metric(self.task, config.best_metric)
        return lambda model: self.task.evaluate(model, validation)

    def finish(self, model: keras.Model | None, state: TrainState, *,
               test: tf.data.Dataset | None = None, results: dict | None = None,
               export: Export | None = None, report: dict | Callable | None = None
               ) -> dict | None:
        """Calibration on the validation split (``task.calibrate``: a multi-label threshold), test
        evaluation, ``timing.json``, export and its check, ``metrics.json``, ``report.md`` and the
        summary; returns what ``metrics.json`` holds (None on a non-chief worker, which
        writes nothing).

        ``results`` adds entries to ``metrics.json``. ``report`` is either the keyword arguments
        of ``report.write_report`` that only the recipe knows (``title``, ``encoder``,
        ``example_inputs``) or ``f(results)`` that writes ``report.md`` itself.
        """
        if not self.chief:
            return None
        # metrics.json is a pure function of config and data (bit-identical across reruns and
        # resumes); wall-clock times go to timing.json.
        results = {"steps": state.step, "best_validation": state.best,
                   "validation_history": state.history,
                   "split_sizes": self.split_sizes,
                   **({"budget": self.budget} if self.budget else {}),
                   **({"stopped_by": state.stopped_by} if state.stopped_by else {}),
                   **(self.task.metadata() if self.task else {}), **(results or {})}
        write_json(os.path.join(self.workdir, "timing.json"),
                   {"train_seconds": round(state.seconds, 1)})
        if self.task is not None and self.validation is not None:
            results.update(self.task.calibrate(model, self.validation))
        if test is not None:
            results["test"] = self.evaluate(model, test)
        if export is not None and self.cfg.export.enabled:
            self._export(model, export, results)
        write_json(os.path.join(self.workdir, "metrics.json"), results)
        if callable(report):
            report(results)
        elif report is not None:
            report_lib.write_report(self.workdir, task=self.task, recipe=self.recipe,
                                    config=config_lib.to_dict(self.cfg), results=results,
                                    split_sizes=self.split_sizes,
                                    steps_per_epoch=self.steps_per_epoch, **report)
        if report is not None:
            self.artifacts["report"] = "report.md"
        self._print_summary(results, state.seconds)
        return results

    def _export(self, model: keras.Model, export: Export, results: dict) -> None:
        export_dir = os.path.join(self.workdir, "export")
        served = export.model or model
        if merge_lora(served):  # the adapters cost nothing at serving time
            print("export: LoRA adapters merged into the weights they adapt", flush=True)
        # The checking process imports TensorFlow while the export is written.
        checker = start_fresh_process() if export.check_inputs else None
        try:
            with float32_compute(served):  # a mixed-precision run still serves in float32
                export.write(export_dir)
                self.artifacts["export"] = export.describe
                if checker is not None:
                    expected = self.task.predict(served,
                                                 export.model_inputs(export.check_inputs))
                    check_export(export_dir, export.check_inputs, expected, export.input_name,
                                 self.task.check_output, checker)
                if export.after is not None:
                    self.artifacts.update(export.after(export_dir, results))
        finally:
            if checker is not None and checker.poll() is None:  # the export failed
                checker.kill()
                checker.communicate()

    def _print_summary(self, results: dict, train_seconds: float) -> None:
        print("\nSummary")
        if results.get("test") and self.task is not None:
            print(f"  {self.task.summary_line(results['test'])}")
        stopped = {"patience": " (early stop)", "time": " (train.max_minutes)",
                   "callback": " (stopped by a callback)"}.get(results.get("stopped_by"), "")
        print(f"  steps           {results['steps']} in {train_seconds:.1f} s{stopped}")
        for name, relative in self.artifacts.items():
            print(f"  {name:<15} {os.path.join(self.workdir, relative)}")


def _smoothed(loss_fn: Callable, label_smoothing: float) -> Callable:
    """``loss_fn`` with ``train.label_smoothing`` (a task loss that takes ``label_smoothing``)."""
    if not label_smoothing:
        return loss_fn
    if "label_smoothing" not in inspect.signature(loss_fn).parameters:
        raise config_lib.ConfigError(f"train.label_smoothing={label_smoothing}: this task's "
                                     "loss has no label smoothing; set it to 0")
    return functools.partial(loss_fn, label_smoothing=label_smoothing)


def _check_best_metric(task: Any, best_metric: str) -> None:
    """Refuses a ``train.best_metric`` the task does not compute ('' = the task's own)."""
    if best_metric and best_metric not in task.metric_names:
        raise config_lib.ConfigError(
            f"train.best_metric={best_metric!r} is not a metric of this task; choose one of "
            f"{', '.join(task.metric_names)}")
