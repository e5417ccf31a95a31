"""Image feature-vector encoders with the TF Hub image contract, and the backbones behind them.

Contract: float32 ``[batch, height, width, 3]`` images with values in [0, 1] → ``[batch,
features]``. Anything with it loads: tfhub.dev / Kaggle feature vectors (e.g. ResNet-50), local
directories, the zoo's Keras Applications exports (``resnet50``, ``resnet50v2``) and the project's
own pretrained encoder (``digits_resnet``, from ``python -m recipes.resnet_pretrain``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import tensorflow as tf

from tfpretrain import hub, zoo


class ImageEncoderError(ValueError):
    """An image encoder that does not fit the contract or the requested fine-tuning."""


@dataclasses.dataclass
class LoadedImageEncoder:
    layer: hub.HubLayer
    handle: str
    image_size: int
    dim: int
    blocks: int  # residual blocks the export describes (0: no block metadata)


def _input_size(obj):
    """The fixed input size a SavedModel's ``__call__``/``serving_default`` declares, else None."""
    functions = ([obj.signatures["serving_default"]]
                 if "serving_default" in getattr(obj, "signatures", {}) else [])
    functions += list(getattr(getattr(obj, "__call__", None), "concrete_functions", []) or [])
    for function in functions:
        specs = tf.nest.flatten(function.structured_input_signature)
        for spec in specs:
            if (isinstance(spec, tf.TensorSpec) and spec.shape.rank == 4 and spec.shape[1]
                    and spec.shape[2]):
                return int(spec.shape[1])
    return None


def load_image_encoder(handle: str = "digits_resnet", fine_tune_blocks: int = 0,
                       image_size: int = 0) -> LoadedImageEncoder:
    """Loads an image feature vector as a Keras layer.

    Args:
        handle: preset name (``python -m tfpretrain.zoo list``), local directory, ``gs://`` path
            or tfhub.dev / Kaggle URL.
        fine_tune_blocks: how much of the encoder may train: 0 = none (frozen), N = the top N
            residual blocks and the layers after them (needs the block metadata this project's
            exports carry), -1 = all of it. Freeze or unfreeze later with ``layer.trainable``.
        image_size: input size when the model does not fix one (0 = the model's, else 224).

    Batch norm runs in inference mode (pretrained statistics) while any part of the encoder is
    frozen: always with ``fine_tune_blocks`` ≥ 0, and while ``layer.trainable`` is False. With -1,
    once the whole encoder trains, its batch norm trains too (measured on digits 5-9: 96.4% test
    accuracy, vs 94.7% with batch norm kept in inference mode).

    Example:
        >>> encoder = load_image_encoder("digits_resnet", fine_tune_blocks=2)  # doctest: +SKIP
        >>> size = encoder.image_size  # doctest: +SKIP
        >>> encoder.layer(tf.zeros([1, size, size, 3])).shape  # doctest: +SKIP
    """
    path = zoo.load_preset(handle)["encoder"] if zoo.is_preset(handle) else handle
    obj = hub.load_saved_model(path)
    fixed = _input_size(obj)
    if fixed and image_size and image_size != fixed:
        raise ImageEncoderError(f"{handle!r} takes {fixed}x{fixed} images; drop "
                                f"model.image_size={image_size}")
    size = fixed or image_size or 224
    sizes = [int(n) for n in obj.block_sizes.numpy()] if hasattr(obj, "block_sizes") else []
    blocks = max(len(sizes) - 2, 0)
    trainable_filter = None
    if fine_tune_blocks > 0:
        if fine_tune_blocks > blocks:
            raise ImageEncoderError(
                f"model.fine_tune_blocks={fine_tune_blocks} but {handle!r} has "
                + (f"{blocks} residual blocks" if sizes
                   else "no block metadata (only this project's exports have it)")
                + "; use a smaller number, or -1 to fine-tune all of it")
        top = sum(sizes[-(fine_tune_blocks + 1):])
        chosen = {id(v) for v in list(obj.variables)[-top:]}
        trainable_filter = lambda variable: id(variable) in chosen  # noqa: E731
    layer = hub.HubLayer(obj, trainable=fine_tune_blocks != 0, trainable_filter=trainable_filter,
                         path=hub.resolve_handle(path),
                         inference_only=fine_tune_blocks >= 0, name="image_encoder")
    if fine_tune_blocks and not layer.trainable_weights:
        raise ImageEncoderError(f"{handle!r} has no trainable variables; use "
                                "model.fine_tune_blocks=0")
    try:
        probe = layer(tf.zeros([1, size, size, 3]), training=False)
    except (TypeError, ValueError, tf.errors.OpError) as error:
        raise ImageEncoderError(f"{handle!r} does not take float32 [batch, {size}, {size}, 3] "
                                f"images: {str(error).splitlines()[0]}") from error
    if probe.shape.rank != 2:
        raise ImageEncoderError(f"{handle!r} returns shape {probe.shape}, not [batch, features]; "
                                "use a feature-vector model")
    return LoadedImageEncoder(layer=layer, handle=handle, image_size=size, dim=int(probe.shape[-1]),
                              blocks=blocks)


def build_resnet(image_size: int, filters: Sequence[int] = (64, 128, 256),
                 blocks: Sequence[int] = (2, 2, 2), seed: int | None = None) -> keras.Model:
    """A pre-activation ResNet (KerasHub's ``ResNetBackbone``, basic blocks) with global average
    pooling: images → ``[batch, filters[-1]]``. Takes the model's inputs in [-1, 1].

    The stem (3x3 conv, stride 2, then 3x3 max pooling, stride 2) quarters the image; each stack
    after the first halves it.
    """
    import keras_hub

    if seed is not None:
        keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=list(filters),
        stackwise_num_blocks=list(blocks), stackwise_num_strides=[1] + [2] * (len(filters) - 1),
        block_type="basic_block", use_pre_activation=True, image_shape=(image_size, image_size, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="top_pool")(backbone.output)
    return keras.Model(backbone.input, pooled, name="resnet_features")


def scale_to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """[0, 1] → [-1, 1]: the input scaling ``build_resnet`` models are trained and exported
    with."""
    return images * 2.0 - 1.0
