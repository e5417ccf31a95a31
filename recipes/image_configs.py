"""Configs of the image recipes (resnet_pretrain, resnet_image_classifier): their model and
training sections; the data section is ``tfpretrain.ImageDataConfig``."""

import dataclasses

import tfpretrain as tp

option = tp.config.option


@dataclasses.dataclass
class ImageModelConfig:
    encoder: str = option("image feature vector: preset (glyphs_resnet, digits_resnet, resnet50, "
                          "resnet50v2), local dir, gs:// path or tfhub.dev/Kaggle URL",
                          "glyphs_resnet")
    image_size: int = option("input size when the encoder does not fix one (0 = the encoder's, "
                             "else 224)", 0)
    fine_tune_blocks: int = option("after the head: fine-tune the top N residual blocks (-1 = all, "
                                   "0 = keep the encoder frozen)", -1)
    dropout: float = option("dropout before the classification layer", 0.2)
    baselines: bool = option("also train the same classifier frozen-only and from scratch with "
                             "the same number of steps, and report all three", True)


@dataclasses.dataclass
class ImageTrainConfig(tp.config.HeadFirstTrainConfig):
    head_epochs: int = option("phase 1: epochs of the head on the frozen encoder", 40)
    head_learning_rate: float = option("phase 1 peak AdamW learning rate (also the from-scratch "
                                       "baseline's)", 1e-3)
    epochs: int = option("phase 2: epochs of fine-tuning the top blocks with the head", 40)
    learning_rate: float = option("phase 2 peak AdamW learning rate", 5e-4)
    checkpoint_every: int = option("steps between checkpoints", 100)


ImageClassifierConfig = tp.config.recipe_config(
    "resnet_image_classifier", data=tp.ImageDataConfig, model=ImageModelConfig,
    train=ImageTrainConfig)


@dataclasses.dataclass
class ResnetModelConfig:
    image_size: int = option("input size (images are resized to it)", 32)
    filters: str = option("comma-separated filters per stack (the first must be 64)", "64,128,256")
    blocks: str = option("comma-separated residual blocks per stack", "2,2,2")
    dropout: float = option("dropout before the classification layer", 0.1)


@dataclasses.dataclass
class PretrainExportConfig:
    enabled: bool = option("export the encoder as a TF Hub image feature vector", True)
    preset: str = option("also install the export as this zoo preset in $TFPRETRAIN_CACHE "
                         "('' = no)", "digits_resnet")


ResnetPretrainConfig = tp.config.recipe_config(
    "resnet_pretrain", data=tp.ImageDataConfig, model=ResnetModelConfig,
    export=PretrainExportConfig,
    data_defaults={"name": "digits_source", "test_split": "", "train_per_class": 0},
    train_defaults={"epochs": 30, "global_batch_size": 64, "learning_rate": 2e-3,
                    "checkpoint_every": 200})
