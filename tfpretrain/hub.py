"""TF Hub-format SavedModels as Keras 3 layers that can be frozen or fine-tuned.

This is the only module that loads SavedModels as layers and resolves handles.

Why not the obvious tools (all measured on TF 2.21 + Keras 3.15):
  * ``tensorflow_hub.KerasLayer`` is a Keras 2 layer; Keras 3 models reject it.
  * ``keras.layers.TFSMLayer`` names its weights after the TF variables (``.../kernel:0``), so Adam
    and AdamW fail to create slots (``'..kernel:0_momentum' is not a valid scope name``), and it
    never passes ``training=True`` to the SavedModel, so dropout stays off while fine-tuning.

``HubLayer`` wraps each restored ``tf.Variable`` in a ``keras.Variable`` (the Keras TF backend
adopts a ``tf.Variable`` initializer as its storage, so nothing is copied and the restored
functions update the same memory), and calls the restored ``__call__`` with ``training`` when the
SavedModel was traced for it.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

_URL_PREFIXES = ("http://", "https://")


class HandleError(ValueError):
    """A handle that is neither a local SavedModel, a ``gs://`` path nor a hub URL."""


def _import_tensorflow_hub():
    """Imports ``tensorflow_hub`` even where setuptools >= 82 removed ``pkg_resources``.

    tensorflow_hub 0.16.1 (the last release) uses ``pkg_resources.parse_version`` once, to check
    the TensorFlow version at import time. Where ``pkg_resources`` is missing we provide exactly
    that function from ``packaging`` under the same name, and nothing else.
    """
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        from packaging.version import parse as parse_version

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse_version
        sys.modules["pkg_resources"] = shim
    return importlib.import_module("tensorflow_hub")


def is_url(handle: str) -> bool:
    return handle.startswith(_URL_PREFIXES)


def resolve_handle(handle: str | os.PathLike[str]) -> str:
    """Returns a path that ``tf.saved_model.load`` can read for ``handle``.

    Args:
        handle: a local directory, a ``gs://`` path, or a tfhub.dev / Kaggle URL. URLs are
            downloaded once through tensorflow_hub's resolver and cache (``TFHUB_CACHE_DIR``).

    Example:
        >>> resolve_handle("/tmp/my_encoder")  # doctest: +SKIP
        '/tmp/my_encoder'
    """
    handle = str(handle)
    if is_url(handle):
        return _import_tensorflow_hub().resolve(handle)
    path = handle if handle.startswith("gs://") else os.path.expanduser(handle)
    if not tf.io.gfile.exists(path):
        raise HandleError(
            f"{handle!r} is not a preset, an existing directory, a gs:// path or a "
            "tfhub.dev/Kaggle URL (see `python -m tfpretrain.zoo list`)"
        )
    if not tf.saved_model.contains_saved_model(path):
        raise HandleError(f"{handle!r} is a directory but holds no SavedModel "
                          "(no saved_model.pb)")
    return path


def load_saved_model(handle: str | os.PathLike[str]) -> Any:
    """Loads the SavedModel at ``handle`` (see ``resolve_handle``) as a restored object.

    ``tensorflow_text`` is imported first: BERT preprocessors use its ops, and loading fails with
    "Op type not registered" without it.

    Example:
        >>> obj = load_saved_model("/tmp/my_encoder")  # doctest: +SKIP
    """
    import tensorflow_text  # noqa: F401  (registers the ops preprocessors use)

    return tf.saved_model.load(resolve_handle(handle))


def takes_training_argument(function):
    """True when a restored ``tf.function`` was traced with ``training`` True and False.

    We read the concrete functions' signatures instead of trying a call: a failed call leaves a
    lock behind that deadlocks MirroredStrategy later.
    """
    spec = getattr(function, "function_spec", None)
    names = []
    if spec is not None:
        names = list(spec.fullargspec.args) + list(spec.fullargspec.kwonlyargs)
    if "training" not in names:
        return False
    seen = set()
    for concrete in getattr(function, "concrete_functions", []):
        args, kwargs = concrete.structured_input_signature
        for value in tf.nest.flatten((args, kwargs)):
            if isinstance(value, bool):
                seen.add(value)
    return seen == {True, False}


# Stateful random ops: TensorFlow's op determinism refuses them without a seed.
_RANDOM_OPS = frozenset({"RandomUniform", "RandomUniformInt", "RandomStandardNormal",
                         "TruncatedNormal", "ParameterizedTruncatedNormal", "RandomGamma",
                         "RandomPoisson", "RandomPoissonV2", "Multinomial", "RandomShuffle"})


def unseeded_random_ops(model: keras.Model) -> list[str]:
    """``layer/op`` names of the random ops without a seed that ``model``'s fine-tuned
    ``HubLayer``s run in training mode: dropout traced without a global seed, as TF Model Garden's
    ``export_tfhub`` (behind tfhub.dev's BERT encoders) writes it. TensorFlow's op determinism
    refuses such ops at the first training step."""
    found = []
    for layer in model.layers:
        if isinstance(layer, HubLayer) and layer.trainable and layer._takes_training:
            if layer._unseeded_ops is None:  # graph_def of a whole encoder: read it once
                layer._unseeded_ops = _unseeded_ops(layer._function)
            found += [f"{layer.name}/{op}" for op in layer._unseeded_ops]
    return found


def _unseeded_ops(function):
    names = set()
    for concrete in getattr(function, "concrete_functions", []):
        flags = [v for v in tf.nest.flatten(concrete.structured_input_signature)
                 if isinstance(v, bool)]
        if True not in flags:  # the inference trace runs no dropout
            continue
        graph = concrete.graph.as_graph_def()
        for node in [*graph.node, *(n for f in graph.library.function for n in f.node_def)]:
            if node.op in _RANDOM_OPS and not node.attr["seed"].i and not node.attr["seed2"].i:
                names.add(node.op)
    return sorted(names)


def _restored_variables(obj, function):
    """(trainable, non_trainable) variables of a restored object, TF Hub conventions first."""
    if hasattr(obj, "variables"):
        everything = list(obj.variables)
        trainable = list(getattr(obj, "trainable_variables", everything))
    else:  # A plain SavedModel: take what the callable captures.
        concretes = getattr(function, "concrete_functions", None) or [function]
        everything, trainable = [], []
        for concrete in concretes:
            everything += list(concrete.variables)
            trainable += list(concrete.trainable_variables)
    trainable_ids = {id(v) for v in trainable}
    unique = list({id(v): v for v in everything}.values())
    return (
        [v for v in unique if id(v) in trainable_ids],
        [v for v in unique if id(v) not in trainable_ids],
    )


def _keras_name(variable):
    # Keras variable names are used as optimizer slot scopes: no ':0', no '/'.
    return variable.name.split(":")[0].replace("/", "_")


@keras.saving.register_keras_serializable(package="tfpretrain")
class HubLayer(keras.layers.Layer):
    """A TF Hub-format SavedModel as a Keras 3 layer, frozen or fine-tunable.

    The layer always computes in float32 (it holds the SavedModel's float32 graph), so a
    mixed-precision policy leaves it alone; its float inputs are cast to float32.

    Args:
        handle: local directory, ``gs://`` path or tfhub.dev / Kaggle URL, or an object already
            returned by ``load_saved_model``.
        trainable: fine-tune the SavedModel's trainable variables.
        signature: call this signature (e.g. ``"serving_default"``) instead of ``__call__``.
        output_key: pick this entry when the model returns a dict.
        trainable_filter: with ``trainable``, fine-tune only the SavedModel's trainable
            variables for which ``trainable_filter(variable)`` is true (e.g. the top blocks of an
            image encoder); the others stay frozen.
        inference_only: always call the SavedModel with ``training=False``, also while its
            variables train (image encoders: batch norm keeps its pretrained statistics, as the
            Keras transfer-learning guide prescribes; a Keras 3 functional model passes the outer
            ``training`` to every layer, whatever the layer was called with when it was built).
        path: where ``handle`` was loaded from, when ``handle`` is an object (a ``.keras`` file
            stores the path, not the SavedModel, and loads the layer from it again).

    A model holding the layer saves and loads with ``model.save("m.keras")`` /
    ``keras.models.load_model`` (after ``import tfpretrain``): the file keeps the layer's handle
    and options and the (fine-tuned) weights; the handle must still resolve when it is loaded.

    Example:
        >>> encoder = HubLayer("/tmp/bert_encoder", trainable=True)  # doctest: +SKIP
        >>> outputs = encoder({"input_word_ids": ids, "input_mask": mask,
        ...                    "input_type_ids": types}, training=True)  # doctest: +SKIP
    """

    def __init__(self, handle: Any, trainable: bool = False, signature: str | None = None,
                 output_key: str | None = None,
                 trainable_filter: Callable[[tf.Variable], bool] | None = None,
                 inference_only: bool = False, path: str | None = None,
                 trainable_variable_names: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(trainable=trainable, **kwargs)
        self.handle = handle if isinstance(handle, str) else path
        self._obj = load_saved_model(handle) if isinstance(handle, str) else handle
        self._signature = signature
        self._output_key = output_key
        self._inference_only = inference_only
        self._unseeded_ops = None  # filled by unseeded_random_ops
        if signature:
            if signature not in self._obj.signatures:
                raise ValueError(
                    f"SavedModel {handle!r} has no signature {signature!r}; it has "
                    f"{sorted(self._obj.signatures)}"
                )
            self._function = self._obj.signatures[signature]
            self._input_names = sorted(self._function.structured_input_signature[1])
            self._takes_training = False
        else:
            if not callable(self._obj):
                raise ValueError(
                    f"SavedModel {handle!r} has no __call__; pass signature=, one of "
                    f"{sorted(self._obj.signatures)}"
                )
            self._function = self._obj.__call__
            self._takes_training = takes_training_argument(self._function)
        trainable_vars, frozen_vars = _restored_variables(self._obj, self._function)
        if trainable_variable_names is not None:  # from a .keras file: the filter's choice
            names = set(trainable_variable_names)
            trainable_filter = lambda variable: variable.name in names  # noqa: E731
        self._trainable_names = None
        if trainable_filter is not None:
            self._trainable_names = [v.name for v in trainable_vars if trainable_filter(v)]
            frozen_vars = [v for v in trainable_vars if not trainable_filter(v)] + frozen_vars
            trainable_vars = [v for v in trainable_vars if trainable_filter(v)]
        self._hub_weights = [
            keras.Variable(
                initializer=variable,
                shape=variable.shape,
                dtype=variable.dtype,
                trainable=is_trainable,
                name=_keras_name(variable),
            )
            for variable, is_trainable in [(v, True) for v in trainable_vars]
            + [(v, False) for v in frozen_vars]
        ]
        for weight in self._hub_weights:
            self._track_variable(weight)
        self.built = True

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "checkpoint":
            # Keras checkpoints a layer's weights through named attributes, which these are not:
            # name them here. And drop the restored object, whose variables are the same memory
            # (a second path would store every weight twice).
            children.pop("_obj", None)
            children.pop("_function", None)
            for index, weight in enumerate(self._hub_weights):
                children[f"weight_{index}_{weight.name}"] = weight
        else:
            # A SavedModel keeps the restored object (its functions capture these variables);
            # the Keras wrappers of the same variables would store every weight a second time.
            children.pop("_hub_weights", None)
        return children

    def get_config(self) -> dict:
        if self.handle is None:
            raise ValueError(f"HubLayer {self.name!r} was built from a loaded object without "
                             "path=, so a .keras file cannot say where to load it from")
        return {**super().get_config(), "handle": self.handle, "signature": self._signature,
                "output_key": self._output_key, "inference_only": self._inference_only,
                "trainable_variable_names": self._trainable_names}

    @property
    def saved_model(self) -> Any:
        """The restored SavedModel object (for its other functions and assets)."""
        return self._obj

    def call(self, inputs: Any, training: bool | None = False) -> Any:
        inputs = tf.nest.map_structure(_to_float32, inputs)
        if self._signature:
            if not isinstance(inputs, dict):
                if len(self._input_names) != 1:
                    raise ValueError(f"signature needs named inputs {self._input_names}")
                inputs = {self._input_names[0]: inputs}
            outputs = self._function(**inputs)
        elif self._takes_training:
            # Dropout in the SavedModel runs only when fine-tuning and training.
            outputs = self._function(
                inputs, training=bool(training and self.trainable and not self._inference_only)
            )
        else:
            outputs = self._function(inputs)
        if self._output_key is not None:
            if self._output_key not in outputs:
                raise KeyError(f"output {self._output_key!r} not in {sorted(outputs)}")
            outputs = outputs[self._output_key]
        return outputs


def _to_float32(x):
    x = tf.convert_to_tensor(x)
    return tf.cast(x, tf.float32) if x.dtype.is_floating else x
