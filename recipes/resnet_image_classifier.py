"""Transfer a pretrained image encoder to a new task: head on the frozen encoder, then fine-tune its top blocks.

Default: the digits_resnet encoder (from recipes.resnet_pretrain on digits 0-4; built on first use)
on digits 5-9 with 20 labelled training images per class (TFDS builder digits_target). Phase 1
trains the head with the encoder frozen; phase 2 unfreezes the top 2 residual blocks at a 10x lower
learning rate. Batch norm stays in inference mode throughout. With --model.baselines=true (default)
the same classifier is also trained frozen-only and from scratch with the same number of steps, and
metrics.json and report.md show all three.

    python -m recipes.resnet_image_classifier
    python -m recipes.resnet_image_classifier --data.train_per_class=5
    python -m recipes.resnet_image_classifier --data.image_dir=photos/ --model.encoder=resnet50v2 \\
        --data.augment=flip,rotation,zoom,contrast --data.train_per_class=0
"""

import base64
import dataclasses
import json
import math
import os
import sys

import keras
import tensorflow as tf

import tfpretrain as tp
from tfpretrain import cli, config as config_lib, files, zoo
from tfpretrain.data import images as image_data
from tfpretrain.encoders import image as image_encoders
from tfpretrain.export import export_image_classifier


def main(cfg):
    workdir = os.path.abspath(cfg.workdir)
    _ensure_preset(cfg.model.encoder)
    strategy = tp.start_run(cfg)
    datasets, label_names = image_data.make_image_datasets(cfg.data)
    examples = {s: d.cache() for s, d in datasets.items()}
    runs = {"transfer": _transfer}
    if cfg.model.baselines:
        runs.update(frozen=_frozen, scratch=_scratch)
    results, model = {}, None
    for name, build in runs.items():
        print(f"\n== {name}: {build.__doc__.strip()}", flush=True)
        run_dir = workdir if name == "transfer" else os.path.join(workdir, "baselines", name)
        tp.set_seed(cfg.train.seed, cfg.runtime.deterministic)
        trained, result, image_size, state = build(cfg, strategy, examples, label_names, run_dir)
        if trained is None:
            continue
        results[name] = result
        if name == "transfer":
            model, size, main_state = trained, image_size, state
    main = dict(results["transfer"])
    main["label_names"] = label_names
    if cfg.model.baselines:
        main["comparison"] = {n: {"test_accuracy": r.get("test", {}).get("accuracy"),
                                  "best_validation_accuracy": r["best_validation"].get("accuracy"),
                                  "steps": r["steps"]} for n, r in results.items()}
        _print_comparison(main["comparison"])
    files.write_json(os.path.join(workdir, "timing.json"), {"train_seconds": round(main_state.seconds, 1)})
    files.write_json(os.path.join(workdir, "metrics.json"), main)
    artifacts = {"config": "config.json", "metrics": "metrics.json", "checkpoints": "checkpoints/",
                 "tensorboard": "logs/"}
    if cfg.export.enabled:
        export_dir = os.path.join(workdir, "export")
        export_image_classifier(model, label_names, export_dir, size)
        artifacts["export"] = "export/"
        samples = _check_export(model, export_dir, examples, size)
    tp.write_report(
        workdir, title=f"Image classifier: {cfg.model.encoder} on {cfg.data.image_dir or cfg.data.name}",
        recipe="resnet_image_classifier", config=config_lib.to_dict(cfg), results=main,
        label_names=label_names, split_sizes={s: tp.count_examples(d) for s, d in examples.items()},
        encoder={"encoder": zoo.describe(cfg.model.encoder),
                 "fine-tuning": f"head for {cfg.train.head_epochs} epochs on the frozen encoder, then "
                                + ("the whole encoder" if cfg.model.fine_tune_blocks < 0 else
                                   f"the top {cfg.model.fine_tune_blocks} blocks")
                                + f" with the head for {cfg.train.epochs} epochs",
                 "image size": f"{size}x{size}"},
        example_inputs=[{"b64": base64.b64encode(b).decode()} for b in samples[:2]] if cfg.export.enabled else ())
    artifacts["report"] = "report.md"
    tp.print_summary(workdir, main, artifacts, main_state.seconds)


def _ensure_preset(name):
    """Builds the digits_resnet preset with recipes.resnet_pretrain the first time it is needed."""
    spec = zoo.PRESETS.get(name, {})
    if spec.get("recipe") and not os.path.exists(os.path.join(zoo.preset_dir(name), "preset.json")):
        from recipes import resnet_pretrain

        pretrain_dir = os.path.join(zoo.cache_dir(), "runs", spec["recipe"])
        print(f"preset {name} is not in the cache: building it first with python -m recipes.{spec['recipe']} "
              f"(run directory {pretrain_dir}); later runs reuse it", flush=True)
        cfg = config_lib.ResnetPretrainConfig(workdir=pretrain_dir)
        cfg.export.preset = name
        resnet_pretrain.main(cfg)


def _batches(cfg, examples, split, size, augment=None, epoch=None, skip=0):
    seed = None if epoch is None else cfg.train.seed + epoch
    return image_data.make_image_batches(examples[split], cfg.train.global_batch_size, size, augment, seed,
                                         cfg.data.shuffle_buffer, skip)


def _phase(model, cfg, train_config, strategy, examples, label_names, size, run_dir, what):
    augment = image_data.build_augmenter(cfg.data.augment, cfg.train.seed)
    steps_per_epoch = math.ceil(tp.count_examples(examples["train"]) / train_config.global_batch_size)
    total = train_config.max_steps or train_config.epochs * steps_per_epoch
    with strategy.scope():
        optimizer = tp.build_optimizer(train_config, total)
    trainable = sum(int(tf.size(v)) for v in model.trainable_variables)
    print(f"{what}: global batch {train_config.global_batch_size} | steps/epoch {steps_per_epoch} | total steps "
          f"{total} | trainable parameters {trainable:,} | learning rate {train_config.learning_rate}", flush=True)
    evaluate = None
    if "validation" in examples:
        evaluate = lambda m: tp.evaluate_classifier(m, _batches(cfg, examples, "validation", size), label_names)  # noqa: E731
    return tp.fit(model, optimizer, lambda epoch, skip: _batches(cfg, examples, "train", size, augment, epoch, skip),
                  steps_per_epoch, train_config, strategy, run_dir, evaluate=evaluate,
                  steps_per_execution=cfg.runtime.steps_per_execution, jit_compile=cfg.runtime.jit_compile)


def _result(model, state, cfg, examples, label_names, size):
    result = {"steps": state.step, "best_validation": state.best, "validation_history": state.history}
    if "test" in examples:
        result["test"] = tp.evaluate_classifier(model, _batches(cfg, examples, "test", size), label_names)
        print(tp.format_report(result["test"], label_names), flush=True)
    return result


def _head_config(cfg, epochs):
    return dataclasses.replace(cfg.train, epochs=epochs, learning_rate=cfg.train.head_learning_rate)


def _transfer(cfg, strategy, examples, label_names, run_dir):
    """head on the frozen encoder, then the top blocks fine-tuned with it"""
    with strategy.scope():
        encoder = image_encoders.load_image_encoder(cfg.model.encoder, cfg.model.fine_tune_blocks,
                                                    cfg.model.image_size)
        model = tp.build_image_classifier(encoder.layer, len(label_names), encoder.image_size,
                                          cfg.model.dropout, seed=cfg.train.seed)
    encoder.layer.trainable = False
    size = encoder.image_size
    state = _phase(model, cfg, _head_config(cfg, cfg.train.head_epochs), strategy, examples, label_names, size,
                   os.path.join(run_dir, "head"), "phase 1, head on the frozen encoder")
    if cfg.model.fine_tune_blocks and cfg.train.epochs:
        encoder.layer.trainable = True
        head = state
        what = "the whole encoder" if cfg.model.fine_tune_blocks < 0 else f"top {cfg.model.fine_tune_blocks} blocks"
        state = _phase(model, cfg, cfg.train, strategy, examples, label_names, size, run_dir,
                       f"phase 2, {what} + head")
        state.step += head.step
        state.seconds += head.seconds
    return model, _result(model, state, cfg, examples, label_names, size), size, state


def _frozen(cfg, strategy, examples, label_names, run_dir):
    """the head alone on the frozen encoder, for as many steps"""
    with strategy.scope():
        encoder = image_encoders.load_image_encoder(cfg.model.encoder, 0, cfg.model.image_size)
        model = tp.build_image_classifier(encoder.layer, len(label_names), encoder.image_size,
                                          cfg.model.dropout, seed=cfg.train.seed)
    size = encoder.image_size
    state = _phase(model, cfg, _head_config(cfg, cfg.train.head_epochs + cfg.train.epochs), strategy, examples,
                   label_names, size, run_dir, "frozen encoder, head only")
    return model, _result(model, state, cfg, examples, label_names, size), size, state


def _scratch(cfg, strategy, examples, label_names, run_dir):
    """the same architecture from random weights, for as many steps"""
    info_file = os.path.join(zoo.preset_dir(cfg.model.encoder), "preset.json")
    info = {}
    if os.path.exists(info_file):
        with open(info_file) as f:
            info = json.load(f)
    if "filters" not in info:
        print(f"skipped: the architecture of {cfg.model.encoder!r} is unknown (only presets made by "
              "recipes.resnet_pretrain record it)", flush=True)
        return None, None, None, None
    size = info["image_size"]
    with strategy.scope():
        backbone = image_encoders.build_resnet(size, info["filters"], info["blocks"], seed=cfg.train.seed)
        scaled = keras.Sequential([keras.layers.Lambda(image_encoders.scale_to_unit_range), backbone])
        model = tp.build_image_classifier(scaled, len(label_names), size, cfg.model.dropout, seed=cfg.train.seed)
    state = _phase(model, cfg, _head_config(cfg, cfg.train.head_epochs + cfg.train.epochs), strategy, examples,
                   label_names, size, run_dir, "from scratch, whole model")
    return model, _result(model, state, cfg, examples, label_names, size), size, state


def _print_comparison(comparison):
    print("\nTransfer vs baselines (same number of steps)")
    print(f"  {'run':<10}{'test accuracy':>15}{'best validation':>17}{'steps':>7}")
    for name, r in comparison.items():
        test = r["test_accuracy"]
        print(f"  {name:<10}{(f'{test:.4f}' if test is not None else '—'):>15}"
              f"{r['best_validation_accuracy'] or float('nan'):>17.4f}{r['steps']:>7}")


def _check_export(model, export_dir, examples, size):
    """Serves PNG and JPEG bytes of test images in a fresh process and compares with the in-memory
    model on the same decoded pixels."""
    split = "test" if "test" in examples else "validation"
    encoded = []
    for index, (image, _) in enumerate(examples[split].take(8)):
        if image.dtype == tf.string:  # image_dir: the file's own bytes
            encoded.append(image.numpy())
        else:
            encoded.append((tf.io.encode_png if index % 2 else tf.io.encode_jpeg)(image).numpy())
    pixels = tf.stack([image_data.to_float_image(tf.constant(b), size) for b in encoded])
    expected = tf.nn.softmax(model(pixels, training=False)).numpy()
    tp.check_export(export_dir, encoded, expected, input_name="image_bytes")
    return encoded


if __name__ == "__main__":
    sys.exit(cli.run(main, config_lib.ImageClassifierConfig(), description=__doc__))
