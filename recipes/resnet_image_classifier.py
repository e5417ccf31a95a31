"""Transfer a pretrained image encoder to a new task: a head on the frozen encoder, then fine-tune.

Default: the glyphs_resnet encoder (recipes.resnet_pretrain on 47 printed characters, TFDS glyphs;
built on first use) on digits 5-9, 20 labelled images per class (TFDS digits_target); also, as
baselines, the same classifier frozen-only and from scratch with as many steps (--model.baselines).

    python -m recipes.resnet_image_classifier --data.image_dir=photos/ --model.encoder=resnet50v2 \\
        --data.augment=flip,rotation,zoom,contrast --data.train_per_class=0
"""

import base64
import os
import sys

import tfpretrain as tp
from recipes import resnet_pretrain
from recipes.image_configs import ImageClassifierConfig

RUNS = {"transfer": "head on the frozen encoder, then the top blocks fine-tuned with it",
        "frozen": "the head alone on the frozen encoder, for as many steps",
        "scratch": "the same architecture from random weights, for as many steps"}


def main(cfg):
    resnet_pretrain.ensure_preset(cfg.model.encoder)
    run = tp.Run(cfg, "resnet_image_classifier")
    datasets, label_names = tp.images.make_image_datasets(cfg.data)
    run.task = tp.SingleLabelClassification(label_names)
    examples = run.cache(datasets)
    outcomes = {}
    for name, about in list(RUNS.items())[:3 if cfg.model.baselines else 1]:
        print(f"\n== {name}: {about}", flush=True)
        run.reseed()
        with run.scope():
            built = (_transfer if name == "transfer" else _baseline)(cfg, len(label_names), name)
        if built is not None:
            outcomes[name] = _train(run, name, examples, *built)
    model, size, state, result = outcomes["transfer"]
    if cfg.model.baselines:
        result["comparison"] = run.compare({n: o[2:] for n, o in outcomes.items()})
    check = tp.images.encode_images(examples["test" if "test" in examples else "validation"], 8)
    run.finish(model, state, results=result, export=tp.Export(
        write=lambda path: tp.export_image_classifier(model, label_names, path, size),
        check_inputs=check, input_name="image_bytes",
        model_inputs=lambda images: tp.images.decode_images(images, size)),
        report={"title": f"Image classifier: {cfg.model.encoder} on "
                         f"{cfg.data.image_dir or cfg.data.name}",
                "encoder": {"encoder": tp.zoo.describe(cfg.model.encoder),
                            "fine-tuning": f"head for {cfg.train.head_epochs} epochs on the frozen "
                                           f"encoder, then {_tuned(cfg)} with the head for "
                                           f"{cfg.train.epochs} epochs",
                            "image size": f"{size}x{size}"},
                "example_inputs": [{"b64": base64.b64encode(b).decode()} for b in check[:2]]})


def _train(run, name, examples, model, size, phases):
    """Trains one run through its phases and scores it on the test split."""
    cfg, augment = run.cfg, [None]  # the current phase's augmenter

    def fresh_augmenter(before):  # each phase augments from the seed's start
        def start_phase():
            before()
            augment[0] = tp.images.build_augmenter(cfg.data.augment, cfg.train.seed)
        return start_phase

    def batches(split, epoch=None, skip=0, augmented=None):
        seed = None if epoch is None else cfg.train.seed + epoch
        return tp.images.make_image_batches(examples[split], cfg.train.global_batch_size, size,
                                            augmented, seed, cfg.data.shuffle_buffer, skip)

    phases = [(what, config, subdir, fresh_augmenter(before))
              for what, config, subdir, before in phases]
    state = run.train_phases(
        model, phases, lambda epoch, skip: batches("train", epoch, skip, augment[0]),
        validation=batches("validation") if "validation" in examples else None,
        workdir=run.workdir if name == "transfer" else os.path.join(run.workdir, "baselines", name))
    test = {"test": run.evaluate(model, batches("test"))} if "test" in examples else {}
    return model, size, state, test


def _tuned(cfg):
    blocks = cfg.model.fine_tune_blocks
    return "the whole encoder" if blocks < 0 else f"the top {blocks} blocks"


def _transfer(cfg, classes, name):
    encoder = tp.load_image_encoder(cfg.model.encoder, cfg.model.fine_tune_blocks,
                                    cfg.model.image_size)
    model = tp.build_image_classifier(encoder.layer, classes, encoder.image_size,
                                      cfg.model.dropout, seed=cfg.train.seed)
    phases = [("phase 1, head on the frozen encoder", cfg.train.head_phase(), "head",
               lambda: setattr(encoder.layer, "trainable", False))]
    if cfg.model.fine_tune_blocks and cfg.train.epochs:
        phases.append((f"phase 2, {_tuned(cfg)} + head", cfg.train, "",
                       lambda: setattr(encoder.layer, "trainable", True)))
    return model, encoder.image_size, phases


def _baseline(cfg, classes, name):
    """The frozen encoder or the same architecture from scratch, for as many steps."""
    if name == "frozen":
        encoder = tp.load_image_encoder(cfg.model.encoder, 0, cfg.model.image_size)
        size = encoder.image_size
        model = tp.build_image_classifier(encoder.layer, classes, size, cfg.model.dropout,
                                          seed=cfg.train.seed)
    else:
        info = tp.zoo.read_preset(cfg.model.encoder)
        if "filters" not in info:
            print(f"skipped: the architecture of {cfg.model.encoder!r} is unknown (only presets "
                  "made by recipes.resnet_pretrain record it)", flush=True)
            return None
        size = info["image_size"]
        model = tp.build_resnet_classifier(size, info["filters"], info["blocks"], classes,
                                           cfg.model.dropout, seed=cfg.train.seed)
    what = "frozen encoder, head only" if name == "frozen" else "from scratch, whole model"
    return model, size, [(what, cfg.train.head_phase(cfg.train.epochs), "", lambda: None)]


if __name__ == "__main__":
    sys.exit(tp.cli.run(main, ImageClassifierConfig(), description=__doc__))
