"""Supervised pretraining of a ResNet on a source image dataset, exported as a TF Hub image feature
vector.

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

import os
import shutil
import sys

import tfpretrain as tp
from recipes.image_configs import ResnetPretrainConfig


def _ints(text, key):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise tp.config.ConfigError(
            f"{key} must be comma-separated integers, got {text!r}") from None


def main(cfg):
    filters = _ints(cfg.model.filters, "model.filters")
    blocks = _ints(cfg.model.blocks, "model.blocks")
    if not filters or len(filters) != len(blocks) or filters[0] != 64:
        raise tp.config.ConfigError("model.filters and model.blocks need one entry per stack, and "
                                    f"the first filter count must be 64 (got {filters}, {blocks})")
    run = tp.Run(cfg, "resnet_pretrain")
    datasets, label_names = tp.images.make_image_datasets(cfg.data)
    run.task = tp.SingleLabelClassification(label_names)
    size = cfg.model.image_size
    with run.scope():
        model = tp.build_resnet_classifier(size, filters, blocks, len(label_names),
                                           cfg.model.dropout, seed=cfg.train.seed)
    backbone = model.get_layer("resnet_features")
    augment = tp.images.build_augmenter(cfg.data.augment, cfg.train.seed)
    examples = run.cache(datasets)

    def batches(split, epoch=None, skip=0, augmented=None):
        seed = None if epoch is None else cfg.train.seed + epoch
        return tp.images.make_image_batches(examples[split], cfg.train.global_batch_size, size,
                                            augmented, seed, cfg.data.shuffle_buffer, skip)

    state = run.train(model, lambda epoch, skip: batches("train", epoch, skip, augment),
                      validation=batches("validation") if "validation" in examples else None,
                      details=f"image size {size} | labels {label_names}")
    architecture = {"image_size": size, "filters": filters, "blocks": blocks}

    def write(path):
        tp.export_image_encoder(backbone, path, size, tp.scale_to_unit_range)
        tp.files.write_json(os.path.join(path, "architecture.json"), architecture)

    def install(export_dir, results):
        if not cfg.export.preset:
            return {}
        info = {"contract": "image", "source": run.workdir,
                "pretrained_on": cfg.data.image_dir or cfg.data.name,
                "validation_accuracy": results["best_validation"].get("accuracy"), **architecture}
        target = tp.zoo.install_preset(cfg.export.preset, info, lambda tmp: shutil.copytree(
            export_dir, os.path.join(tmp, "encoder")))
        print(f"installed the encoder as zoo preset {cfg.export.preset} at {target}", flush=True)
        return {"preset": target}

    return run.finish(
        model, state, test=batches("test") if "test" in examples else None,
        export=tp.Export(write=write, describe="export/ (TF Hub image feature vector)",
                         after=install),
        report={"title": f"ResNet pretraining on {cfg.data.image_dir or cfg.data.name}",
                "encoder": {"architecture": "pre-activation ResNet (KerasHub ResNetBackbone, basic "
                                            f"blocks), filters {filters}, blocks {blocks}, "
                                            f"{size}x{size} inputs",
                            "parameters": f"{backbone.count_params():,}",
                            "export contract": "float32 [batch, h, w, 3] in [0, 1] -> "
                                               f"[batch, {filters[-1]}] (TF Hub image feature "
                                               "vector)"}})


def ensure_preset(name):
    """Builds a preset this recipe makes (digits_resnet, glyphs_resnet) the first time it is
    needed, with the flags its zoo entry records."""
    preset = tp.zoo.PRESETS.get(name, {})
    if preset.get("recipe") == "resnet_pretrain" and not tp.zoo.is_installed(name):
        flags = preset.get("recipe_flags", {})
        pretrain_dir = os.path.join(tp.zoo.cache_dir(), "runs", name)
        command = " ".join(["python -m recipes.resnet_pretrain",
                            *(f"--{key}={value}" for key, value in flags.items())])
        print(f"preset {name} is not in the cache: building it first with {command} (run "
              f"directory {pretrain_dir}); later runs reuse it", flush=True)
        cfg = ResnetPretrainConfig(workdir=pretrain_dir)
        cfg.export.preset = name
        for key, value in flags.items():
            section, field = key.split(".")
            setattr(getattr(cfg, section), field, value)
        main(cfg)


if __name__ == "__main__":
    sys.exit(tp.cli.run(main, ResnetPretrainConfig(), description=__doc__))
