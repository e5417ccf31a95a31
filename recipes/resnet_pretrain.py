"""Supervised pretraining of a ResNet on a source image dataset, exported as a TF Hub image feature vector.

Default: a small pre-activation ResNet (KerasHub ResNetBackbone, basic blocks, filters 64/128/256,
2 blocks per stack, 32x32 inputs) trained on scikit-learn's handwritten digits 0-4 (TFDS builder
digits_source), then exported with the TF Hub image contract ([0, 1] float images in, 256-d feature
vector out) and installed as the zoo preset digits_resnet, which recipes.resnet_image_classifier
fine-tunes on digits 5-9.

    python -m recipes.resnet_pretrain
    python -m recipes.resnet_pretrain --model.filters=64,128 --model.blocks=1,1 --export.preset=
    python -m recipes.resnet_pretrain --data.name=cifar10 --data.validation_split='train[90%:]' \\
        --data.train_split='train[:90%]' --data.augment=flip,zoom --export.preset=
"""

import json
import math
import os
import shutil
import sys

import keras

import tfpretrain as tp
from tfpretrain import cli, config as config_lib, files, zoo
from tfpretrain.data import images as image_data
from tfpretrain.encoders import image as image_encoders
from tfpretrain.hub_format import export_image_encoder


def _ints(text, key):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise config_lib.ConfigError(f"{key} must be comma-separated integers, got {text!r}") from None


def main(cfg):
    workdir = os.path.abspath(cfg.workdir)
    filters, blocks = _ints(cfg.model.filters, "model.filters"), _ints(cfg.model.blocks, "model.blocks")
    if not filters or len(filters) != len(blocks) or filters[0] != 64:
        raise config_lib.ConfigError("model.filters and model.blocks need one entry per stack, and "
                                     f"the first filter count must be 64 (got {filters}, {blocks})")
    strategy = tp.start_run(cfg)
    datasets, label_names = image_data.make_image_datasets(cfg.data)
    size, batch = cfg.model.image_size, cfg.train.global_batch_size
    with strategy.scope():
        backbone = image_encoders.build_resnet(size, filters, blocks, seed=cfg.train.seed)
        images = keras.Input((size, size, 3), name="images")
        features = backbone(image_encoders.scale_to_unit_range(images))
        head = tp.build_classification_head(len(label_names), cfg.model.dropout, seed=cfg.train.seed)
        model = keras.Model(images, head(features), name="resnet_classifier")
    augment = image_data.build_augmenter(cfg.data.augment, cfg.train.seed)
    examples = {s: d.cache() for s, d in datasets.items()}

    def train_batches(epoch, skip):
        return image_data.make_image_batches(examples["train"], batch, size, augment, cfg.train.seed + epoch,
                                             cfg.data.shuffle_buffer, skip)

    def eval_batches(split):
        return image_data.make_image_batches(examples[split], batch, size)

    steps_per_epoch = math.ceil(tp.count_examples(examples["train"]) / batch)
    total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    with strategy.scope():
        optimizer = tp.build_optimizer(cfg.train, total)
    print(f"replicas {strategy.num_replicas_in_sync} | global batch {batch} | steps/epoch {steps_per_epoch} | "
          f"total steps {total} | parameters {backbone.count_params():,} | image size {size} | "
          f"labels {label_names}", flush=True)
    evaluate = None
    if "validation" in examples:
        evaluate = lambda m: tp.evaluate_classifier(m, eval_batches("validation"), label_names)  # noqa: E731
    state = tp.fit(model, optimizer, train_batches, steps_per_epoch, cfg.train, strategy, workdir,
                   evaluate=evaluate,
                   steps_per_execution=cfg.runtime.steps_per_execution, jit_compile=cfg.runtime.jit_compile)
    results = {"steps": state.step, "best_validation": state.best, "validation_history": state.history,
               "label_names": label_names}
    files.write_json(os.path.join(workdir, "timing.json"), {"train_seconds": round(state.seconds, 1)})
    if "test" in examples:
        results["test"] = tp.evaluate_classifier(model, eval_batches("test"), label_names)
        print(tp.format_report(results["test"], label_names))
    files.write_json(os.path.join(workdir, "metrics.json"), results)
    artifacts = {"config": "config.json", "metrics": "metrics.json", "checkpoints": "checkpoints/",
                 "tensorboard": "logs/"}
    architecture = {"image_size": size, "filters": filters, "blocks": blocks}
    if cfg.export.enabled:
        export_dir = os.path.join(workdir, "export")
        export_image_encoder(backbone, export_dir, size, image_encoders.scale_to_unit_range)
        files.write_json(os.path.join(export_dir, "architecture.json"), architecture)
        artifacts["export"] = "export/ (TF Hub image feature vector)"
        if cfg.export.preset:
            _install_preset(cfg.export.preset, export_dir, architecture, results, cfg)
            artifacts["preset"] = zoo.preset_dir(cfg.export.preset)
    tp.write_report(workdir, title=f"ResNet pretraining on {cfg.data.image_dir or cfg.data.name}",
                    recipe="resnet_pretrain", config=config_lib.to_dict(cfg), results=results,
                    label_names=label_names, split_sizes={s: tp.count_examples(d) for s, d in examples.items()},
                    encoder={"architecture": f"pre-activation ResNet (KerasHub ResNetBackbone, basic blocks), "
                                             f"filters {filters}, blocks {blocks}, {size}x{size} inputs",
                             "parameters": f"{backbone.count_params():,}",
                             "export contract": "float32 [batch, h, w, 3] in [0, 1] -> "
                                                f"[batch, {filters[-1]}] (TF Hub image feature vector)"},
                    steps_per_epoch=steps_per_epoch)
    artifacts["report"] = "report.md"
    tp.print_summary(workdir, results, artifacts, state.seconds)
    return results


def _install_preset(name, export_dir, architecture, results, cfg):
    """Copies the export into the zoo cache as preset ``name`` (atomically, replacing an old one)."""
    target = zoo.preset_dir(name)
    with files.atomic_directory(target) as tmp:
        shutil.copytree(export_dir, os.path.join(tmp, "encoder"))
        with open(os.path.join(tmp, "preset.json"), "w") as f:
            json.dump({"name": name, "contract": "image", "source": os.path.abspath(cfg.workdir),
                       "pretrained_on": cfg.data.image_dir or cfg.data.name,
                       "validation_accuracy": results["best_validation"].get("accuracy"),
                       **architecture}, f, indent=2)
    print(f"installed the encoder as zoo preset {name} at {target}", flush=True)


if __name__ == "__main__":
    sys.exit(cli.run(main, config_lib.ResnetPretrainConfig(), description=__doc__))
