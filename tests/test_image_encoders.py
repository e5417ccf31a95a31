"""Image feature vectors: the zoo's Keras Applications export, block metadata, partial
fine-tuning."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpretrain import converters
from tfpretrain.encoders.image import ImageEncoderError, load_image_encoder
from tfpretrain.hub_export import block_groups
from tfpretrain.models import build_image_classifier


def _toy_application(size=16):
    """A Keras Applications-style ResNet: stem, two residual blocks named like ResNet50's, top."""
    images = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1_conv")(images)
    for stage in (2, 3):
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"conv{stage}_block1_1_conv")(x)
        y = keras.layers.BatchNormalization(name=f"conv{stage}_block1_1_bn")(y)
        x = keras.layers.Add(name=f"conv{stage}_block1_out")([x, keras.layers.ReLU()(y)])
    x = keras.layers.BatchNormalization(name="post_bn")(x)
    return keras.Model(images, keras.layers.GlobalAveragePooling2D(name="avg_pool")(x))


def test_block_groups_follow_layer_names():
    groups = block_groups(_toy_application())
    # stem, conv2_block1, conv3_block1, top (post_bn)
    assert [len(g) for g in groups] == [2, 6, 6, 4]


def test_toy_application_exported_by_the_zoo_loads_through_hub_and_trains(tmp_path):
    path = converters.export_keras_application(_toy_application(), str(tmp_path / "toy"),
                                               image_size=16,
                                               preprocess=lambda images: images * 2.0 - 1.0)
    encoder = load_image_encoder(path, fine_tune_blocks=1)
    assert encoder.image_size == 16 and encoder.dim == 8 and encoder.blocks == 2
    # Top block (conv3_block1: 2 kernels/biases + BN gamma/beta) and the top (post_bn gamma/beta).
    assert len(encoder.layer.trainable_weights) == 6
    model = build_image_classifier(encoder.layer, 3, encoder.image_size, seed=0)
    before = [w.numpy().copy() for w in encoder.layer.weights]
    rng = np.random.default_rng(0)
    x = rng.random((24, 16, 16, 3)).astype("float32")
    y = (x[:, :8].mean(axis=(1, 2, 3)) * 30).astype("int64") % 3
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    trainable = {id(w) for w in encoder.layer.trainable_weights}
    for weight, old in zip(encoder.layer.weights, before):
        changed = not np.array_equal(weight.numpy(), old)
        # Batch norm runs in inference mode: its moving statistics never change.
        assert changed == (id(weight) in trainable and "moving" not in weight.name), weight.name


def test_fine_tune_blocks_beyond_the_model_is_a_clear_error(tmp_path):
    path = converters.export_keras_application(_toy_application(), str(tmp_path / "toy"),
                                               image_size=16)
    with pytest.raises(ImageEncoderError, match="has 2 residual blocks"):
        load_image_encoder(path, fine_tune_blocks=3)
    frozen = load_image_encoder(path)
    assert not frozen.layer.trainable_weights
    everything = load_image_encoder(path, fine_tune_blocks=-1)
    assert len(everything.layer.trainable_weights) == 2 + 4 + 4 + 2  # moving statistics never train


@pytest.mark.network
@pytest.mark.parametrize("handle", ["resnet50v2",
                                    "https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/5"])
def test_imagenet_resnets_load(handle):
    encoder = load_image_encoder(handle, image_size=224)
    assert encoder.dim == 2048
    assert encoder.layer(tf.zeros([2, 224, 224, 3])).shape == (2, 2048)
