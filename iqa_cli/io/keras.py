"""Import of released Keras ``.hdf5`` models (ASNA and its learned sorter) into native networks.

Why this module imports h5py: a Keras model file is HDF5 (a ``model_config`` JSON attribute and a
``model_weights`` group per layer), a foreign format read once at import time. The project's own
HDF5 stores stay with io/store.py.

How a file is understood, without trusting layer names or Keras' own layer order:
1. The functional graph in ``model_config`` is rebuilt call by call (nested models, which a
   Siamese encoder often is, are inlined; TF-op layers such as ``x - 127.5`` are followed too).
2. The layers that hold weights are listed in the order a depth-first walk from the output first
   meets them (inputs in their call order): the order the computation is written in.
3. That list is matched against the ASNA (or sorter) architecture slot by slot: layer type,
   padding, strides, activation (inline or a following LeakyReLU/ReLU/Activation layer), where the
   BatchNorms sit. The variant (ConvLSTM2D -> tiled, gating -> attention, BatchNorm -> bn, else
   simple) and every size (filters, kernels, strides, LeakyReLU alpha, widths, input size) come from
   the file. The first layer that does not fit is one WeightsError naming it.
4. Concatenations are resolved by where their inputs come from, so a model that concatenated
   [skip, upsampled] instead of [upsampled, skip] still gets its kernel's input channels right.

Weights are converted layer by layer: Conv kernels HWIO -> OIHW (Conv1D WIO -> OIW), Dense kernels
(in, out) -> (out, in) (Flatten's channels-last order is reproduced by the native network),
BatchNorm gamma/beta/moving mean/moving variance -> weight/bias/running stats (eps 1e-3),
ConvLSTM2D kernel/recurrent kernel/bias kept in Keras' gate order i, f, c, o, PReLU alphas
(positions, channels) -> (channels, positions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..errors import WeightsError
from ..models.asna import AsnaConfig, AsnaNet
from ..models.keras_layers import KERAS_BN_EPS
from ..models.sorter import Sorter, SorterConfig

MODEL_CLASSES = ("Functional", "Model", "Sequential")
FAMILIES = ("asna", "sorter")


# -- the file as a graph of layer calls ----------------------------------------------------------
@dataclass(eq=False)
class KerasCall:
    """One call of a Keras layer. ``owner`` identifies the weights it uses: (top-level group in
    model_weights, layer name); a shared layer's calls share it."""

    name: str
    class_name: str
    config: dict
    owner: tuple[str, str]
    inputs: list["KerasCall"] = field(default_factory=list)
    model_input: int | None = None  # index among the model's inputs, for an input

    def describe(self) -> str:
        return f"'{self.name}' ({self.class_name})"


def _is_ref(value: Any) -> bool:
    return (isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str)
            and isinstance(value[1], int) and isinstance(value[2], int))


def _refs_in(value: Any) -> list[list]:
    """Tensor references nested in a call's keyword arguments (Keras 2 triples, Keras 3 histories)."""
    if _is_ref(value):
        return [value[:3]]
    if isinstance(value, dict):
        if "keras_history" in value.get("config", {}):
            return [list(value["config"]["keras_history"])]
        return [r for v in value.values() for r in _refs_in(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs_in(v)]
    return []


def _node_refs(node: Any) -> list[list]:
    """The input tensors of one inbound node, positional ones first."""
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        return _refs_in(node.get("args", [])) + _refs_in(node.get("kwargs", {}))
    entries = [node] if node and isinstance(node[0], str) else node  # TF-op layers store a single entry
    refs = []
    for entry in entries:
        refs.append(entry[:3])
        if len(entry) > 3:
            refs.extend(_refs_in(entry[3]))
    return refs


def _ref_list(value: Any) -> list[list]:
    return [value] if _is_ref(value) else [r for v in value for r in _ref_list(v)]


def _layer_name(layer: dict) -> str:
    return layer.get("name") or layer["config"]["name"]


def _as_functional(model: dict) -> tuple[list[dict], list[list], list[list]]:
    """(layers, input refs, output refs) of a Functional or Sequential model config."""
    config = model["config"]
    if model["class_name"] != "Sequential":
        return config["layers"], _ref_list(config["input_layers"]), _ref_list(config["output_layers"])
    layers = [dict(layer, name=_layer_name(layer)) for layer in config["layers"]]
    if not layers or layers[0]["class_name"] != "InputLayer":
        layers.insert(0, {"class_name": "InputLayer", "name": "sequential_input", "config": {}})
    for previous, layer in zip(layers, layers[1:]):
        layer["inbound_nodes"] = [[[previous["name"], 0, 0, {}]]]
    return layers, [[layers[0]["name"], 0, 0]], [[layers[-1]["name"], 0, 0]]


def _skips_first_node(layer: dict) -> bool:
    """Keras numbers a nested model's calls from 1 when its own construction is node 0."""
    if layer["class_name"] == "Sequential":
        inner = layer["config"].get("layers", [])
        return bool(inner) and inner[0]["class_name"] == "InputLayer"
    return True


class _Scope:
    """One instance of a (possibly nested) model's graph, with its inputs bound."""

    def __init__(self, graph: "KerasGraph", model: dict, top: str | None, bindings: list[KerasCall] | None,
                 key: tuple):
        self.graph, self.top, self.bindings, self.key = graph, top, bindings, key
        layers, self.input_refs, self.output_refs = _as_functional(model)
        self.layers = {_layer_name(layer): layer for layer in layers}
        self.input_names = [ref[0] for ref in self.input_refs]

    def tensor(self, ref: list) -> KerasCall:
        name, node_index, tensor_index = ref[0], int(ref[1]), int(ref[2])
        if name not in self.layers:
            raise self.graph.error(f"the model config refers to a layer '{name}' it does not define")
        layer = self.layers[name]
        if layer["class_name"] == "InputLayer":
            position = self.input_names.index(name)
            if self.bindings is None:
                return self.graph.model_input(name, position, layer)
            return self.bindings[position]
        if layer["class_name"] in MODEL_CLASSES:
            index = node_index - (1 if _skips_first_node(layer) else 0)
            args = [self.tensor(r) for r in _node_refs(layer["inbound_nodes"][index])]
            inner = self.graph.scope(layer, self.top or name, args, (self.key, name, index))
            return inner.tensor(inner.output_refs[tensor_index])
        memo_key = (self.key, name, node_index)
        if memo_key not in self.graph.calls:
            nodes = layer.get("inbound_nodes", [])
            if node_index >= len(nodes):
                raise self.graph.error(f"layer '{name}' has no call number {node_index} in the model config")
            call = KerasCall(name, layer["class_name"], layer.get("config", {}), (self.top or name, name))
            self.graph.calls[memo_key] = call
            call.inputs = [self.tensor(r) for r in _node_refs(nodes[node_index])]
        return self.graph.calls[memo_key]


class KerasGraph:
    """A Keras model file, understood: its calls from the inputs to the outputs, and the weights of
    each layer (``weights[owner][suffix]``, suffix 'kernel', 'bias', 'gamma', ...)."""

    def __init__(self, path: Path, model: dict, weights: dict[tuple[str, str], dict[str, np.ndarray]]):
        self.path, self.model, self.weights = path, model, weights
        self.calls: dict[tuple, KerasCall] = {}
        self._inputs: dict[str, KerasCall] = {}
        self._scopes: dict[tuple, _Scope] = {}
        root = _Scope(self, model, None, None, ())
        self.outputs = [root.tensor(ref) for ref in root.output_refs]
        self.inputs = [self._inputs[name] for name in root.input_names if name in self._inputs]
        self.order = self._post_order()
        self.consumers: dict[int, list[KerasCall]] = {}
        for call in self.order:
            for source in call.inputs:
                self.consumers.setdefault(id(source), []).append(call)

    def error(self, message: str) -> WeightsError:
        return WeightsError(f"{self.path}: {message}")

    def model_input(self, name: str, position: int, layer: dict) -> KerasCall:
        if name not in self._inputs:
            self._inputs[name] = KerasCall(name, "InputLayer", layer.get("config", {}), (name, name),
                                           model_input=position)
        return self._inputs[name]

    def scope(self, layer: dict, top: str, args: list[KerasCall], key: tuple) -> _Scope:
        if key not in self._scopes:
            self._scopes[key] = _Scope(self, layer, top, args, key)
        return self._scopes[key]

    def _post_order(self) -> list[KerasCall]:
        order, seen = [], set()
        stack = [(call, False) for call in reversed(self.outputs)]
        while stack:
            call, expanded = stack.pop()
            if expanded:
                order.append(call)
                continue
            if id(call) in seen:
                continue
            seen.add(id(call))
            stack.append((call, True))
            stack.extend((source, False) for source in reversed(call.inputs) if id(source) not in seen)
        return order

    def has_weights(self, call: KerasCall) -> bool:
        return bool(self.weights.get(call.owner))

    def weighted_calls(self) -> list[KerasCall]:
        """The first call of each layer that holds weights, in computation order."""
        out, owners = [], set()
        for call in self.order:
            if self.has_weights(call) and call.owner not in owners:
                owners.add(call.owner)
                out.append(call)
        return out

    def class_names(self) -> set[str]:
        return {call.class_name for call in self.order}

    def layer_weights(self, call: KerasCall, *required: str) -> dict[str, np.ndarray]:
        found = self.weights.get(call.owner, {})
        missing = [name for name in required if name not in found]
        if missing:
            raise self.error(f"layer {call.describe()} has no {', '.join(missing)} weights "
                             f"(found: {', '.join(found) or 'none'})")
        return found

    def activation_after(self, call: KerasCall) -> tuple[str, float | None]:
        """The activation applied to a layer's output: its own, else a single following activation layer."""
        own = call.config.get("activation", "linear")
        if isinstance(own, dict):
            own = own.get("config", {}).get("name") or own.get("class_name", "?")
        if own != "linear":
            return str(own), None
        after = self.consumers.get(id(call), [])
        if len(after) == 1:
            nxt = after[0]
            if nxt.class_name == "LeakyReLU":
                return "leaky_relu", float(nxt.config.get("alpha", nxt.config.get("negative_slope", 0.3)))
            if nxt.class_name == "ReLU" and not nxt.config.get("max_value") and not nxt.config.get("negative_slope"):
                return "relu", None
            if nxt.class_name == "Activation":
                return str(nxt.config.get("activation")), None
        return "linear", None

    def model_inputs_of(self, call: KerasCall, _memo: dict | None = None) -> frozenset[int]:
        """Which model inputs a call depends on."""
        memo = {} if _memo is None else _memo
        if id(call) not in memo:
            if call.model_input is not None:
                memo[id(call)] = frozenset({call.model_input})
            else:
                memo[id(call)] = frozenset().union(*(self.model_inputs_of(s, memo) for s in call.inputs))
        return memo[id(call)]

    def upstream_weighted(self, call: KerasCall) -> set[tuple[str, str]]:
        """Owners of the nearest weighted layers above ``call`` (itself if weighted)."""
        owners, stack, seen = set(), [call], set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if self.has_weights(node):
                owners.add(node.owner)
            else:
                stack.extend(node.inputs)
        return owners

    def weightless_path(self, call: KerasCall) -> list[KerasCall]:
        """The calls between ``call``'s input and the nearest weighted layers above it."""
        path, stack, seen = [], list(call.inputs), set()
        while stack:
            node = stack.pop()
            if id(node) in seen or self.has_weights(node):
                continue
            seen.add(id(node))
            path.append(node)
            stack.extend(node.inputs)
        return path


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _layer_names(model: dict) -> set[str]:
    """Every layer name in a model config, nested models included."""
    names = set()
    for layer in _as_functional(model)[0]:
        names.add(_layer_name(layer))
        if layer["class_name"] in MODEL_CLASSES:
            names |= _layer_names(layer)
    return names


def _read_weights(root: h5py.Group, model: dict) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """model_weights -> {(top-level layer, layer): {'kernel': array, ...}}. A layer's group holds its
    weights; a nested model's group holds all its layers' weights, named '<layer>/<weight>:0'
    (possibly under more scopes: the innermost known layer name in the path owns the weight)."""
    nested = {_layer_name(layer) for layer in _as_functional(model)[0] if layer["class_name"] in MODEL_CLASSES}
    known = _layer_names(model)
    weights: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    names = [_decode(n) for n in root.attrs.get("layer_names", list(root.keys()))]
    for top in names:
        group = root[top]
        for weight_name in (_decode(n) for n in group.attrs.get("weight_names", [])):
            parts = weight_name.split("/")
            layer = top
            if top in nested:
                layer = next((p for p in reversed(parts[:-1]) if p in known), parts[-2] if len(parts) > 1 else top)
            suffix = parts[-1].split(":")[0]
            weights.setdefault((top, layer), {})[suffix] = np.asarray(group[weight_name], dtype=np.float32)
    return weights


def read_keras_model(path: str | Path) -> KerasGraph:
    """Open a Keras .hdf5/.h5 model file (saved with ``model.save``) as a :class:`KerasGraph`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file (expected a Keras .hdf5 model)")
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise WeightsError(f"{path}: not an HDF5 file (expected a Keras .hdf5 model saved with model.save)") from None
    with handle:
        if "model_config" not in handle.attrs:
            kind = "a weights-only file (save_weights)" if "layer_names" in handle.attrs else "not a Keras model file"
            raise WeightsError(f"{path}: {kind}: expected a whole Keras model with its model_config "
                               f"(save it with model.save('model.hdf5'))")
        try:
            model = json.loads(_decode(handle.attrs["model_config"]))
        except json.JSONDecodeError as exc:
            raise WeightsError(f"{path}: model_config is not valid JSON ({exc.msg}); copy the file again") from None
        if model.get("class_name") not in MODEL_CLASSES:
            raise WeightsError(f"{path}: the Keras file holds a {model.get('class_name')}, expected a Functional "
                               f"or Sequential model")
        try:
            weights = _read_weights(handle["model_weights"] if "model_weights" in handle else handle, model)
            return KerasGraph(path, model, weights)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise WeightsError(f"{path}: unreadable Keras model ({type(exc).__name__}: {exc})") from None


# -- matching ------------------------------------------------------------------------------------
def _conv_oihw(kernel: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


class _Matcher:
    """Walks the weighted layers of a file against an architecture, collecting native weights."""

    def __init__(self, graph: KerasGraph, architecture: str):
        self.graph, self.architecture = graph, architecture
        self.calls = graph.weighted_calls()
        self.position = 0
        self.state: dict[str, torch.Tensor] = {}
        self.roles: dict[tuple[str, str], str] = {}  # owner -> native prefix
        self.alphas: list[tuple[KerasCall, float]] = []

    def fail(self, call: KerasCall | None, message: str) -> WeightsError:
        where = f"layer {call.describe()}" if call is not None else "the model"
        return self.graph.error(f"{where} {message}; the file is not {self.architecture} model")

    def peek(self) -> KerasCall | None:
        return self.calls[self.position] if self.position < len(self.calls) else None

    def take(self, classes: tuple[str, ...], role: str) -> KerasCall:
        call = self.peek()
        wanted = " or ".join(classes)
        if call is None:
            last = self.calls[-1].describe() if self.calls else "no weighted layer"
            raise self.graph.error(f"the model ends after {last} where {self.architecture} model has a {wanted} "
                                   f"({role}); the file is not {self.architecture} model")
        if call.class_name not in classes:
            raise self.fail(call, f"is where {self.architecture} model has a {wanted} ({role})")
        self.position += 1
        return call

    def finish(self) -> None:
        extra = self.peek()
        if extra is not None:
            raise self.fail(extra, "follows the last layer of the architecture")

    def check_activation(self, call: KerasCall, expected: tuple[str, ...], role: str) -> str:
        """The activation after ``call``, which must be one of ``expected`` (LeakyReLU slopes are collected)."""
        name, alpha = self.graph.activation_after(call)
        if name not in expected:
            raise self.fail(call, f"is followed by a {name} activation where {role} has {' or '.join(expected)}")
        if alpha is not None:
            self.alphas.append((call, alpha))
        return name

    # weights ----------------------------------------------------------------------------------
    def conv2d(self, call: KerasCall, prefix: str, role: str, strided: bool = False) -> tuple[int, int, int, int]:
        """Check a Conv2D (or a Dense used as a 1x1 convolution) and store its weights;
        (in channels, out channels, kernel size, stride)."""
        w = self.graph.layer_weights(call, "kernel")
        kernel = w["kernel"]
        stride = 1
        if call.class_name == "Dense":
            weight = _tensor(kernel.T)[:, :, None, None]
            size = 1
        else:
            cfg = call.config
            if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
                raise self.fail(call, f"has a kernel of shape {kernel.shape} ({role} needs a square 2-D kernel)")
            size = int(kernel.shape[0])
            strides = tuple(cfg.get("strides", (1, 1)))
            stride = int(strides[0])
            if strides[0] != strides[1] or (stride > 1) != strided:
                raise self.fail(call, f"has strides {strides} where {role} has {'a stride > 1' if strided else '1'}")
            padding = cfg.get("padding", "valid")
            if padding != "same" and not (size == 1 and strides == (1, 1)):
                raise self.fail(call, f"pads '{padding}' where {role} pads 'same'")
            if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1) or cfg.get("groups", 1) != 1 or \
                    cfg.get("data_format", "channels_last") != "channels_last":
                raise self.fail(call, "uses dilation, groups or channels-first data, which ASNA does not")
            weight = _conv_oihw(kernel)
        bias = _tensor(w["bias"]) if "bias" in w else torch.zeros(weight.shape[0])
        self.state[f"{prefix}.weight"], self.state[f"{prefix}.bias"] = weight, bias
        self.roles[call.owner] = prefix
        return int(weight.shape[1]), int(weight.shape[0]), size, stride

    def dense(self, call: KerasCall, prefix: str) -> tuple[int, int]:
        w = self.graph.layer_weights(call, "kernel")
        self.state[f"{prefix}.weight"] = _tensor(w["kernel"].T)
        self.state[f"{prefix}.bias"] = _tensor(w["bias"]) if "bias" in w else torch.zeros(w["kernel"].shape[1])
        self.roles[call.owner] = prefix
        return int(w["kernel"].shape[0]), int(w["kernel"].shape[1])

    def batch_norm(self, call: KerasCall, prefix: str, after: KerasCall) -> None:
        cfg = call.config
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, 3, 2):
            raise self.fail(call, f"normalises axis {axis}, not the channels")
        if abs(float(cfg.get("epsilon", KERAS_BN_EPS)) - KERAS_BN_EPS) > 1e-12:
            raise self.fail(call, f"has epsilon {cfg.get('epsilon')} (the Keras default 1e-3 is what iqa rebuilds)")
        if len(call.inputs) != 1 or self.graph.upstream_weighted(call.inputs[0]) != {after.owner}:
            raise self.fail(call, f"does not follow {after.describe()}")
        w = self.graph.layer_weights(call, "moving_mean", "moving_variance")
        channels = w["moving_mean"].shape[0]
        self.state[f"{prefix}.weight"] = _tensor(w["gamma"]) if "gamma" in w else torch.ones(channels)
        self.state[f"{prefix}.bias"] = _tensor(w["beta"]) if "beta" in w else torch.zeros(channels)
        self.state[f"{prefix}.running_mean"] = _tensor(w["moving_mean"])
        self.state[f"{prefix}.running_var"] = _tensor(w["moving_variance"])
        self.state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
        self.roles[call.owner] = prefix

    def concat_order(self, call: KerasCall, classify, native: list[str]) -> list[str]:
        """The roles of the inputs of the concatenation feeding ``call``, in the file's order."""
        concat = next((n for n in self.graph.weightless_path(call) if n.class_name == "Concatenate"), None)
        if concat is None:
            raise self.fail(call, f"is not fed by a concatenation of {', '.join(native)}")
        if concat.config.get("axis", -1) not in (-1, 3):
            raise self.fail(concat, "concatenates along another axis than the channels")
        order = [classify(self.graph.upstream_weighted(source)) for source in concat.inputs]
        if sorted(order) != sorted(native):
            raise self.fail(concat, f"concatenates {', '.join(order)} where the architecture has {', '.join(native)}")
        return order

    def permute_inputs(self, prefix: str, file_order: list[str], native_order: list[str], sizes: dict[str, int]
                       ) -> None:
        """Reorder a kernel's input channels from the file's concatenation order to the native one."""
        if file_order == native_order:
            return
        offsets, start = {}, 0
        for role in file_order:
            offsets[role] = start
            start += sizes[role]
        index = torch.cat([torch.arange(offsets[r], offsets[r] + sizes[r]) for r in native_order])
        self.state[f"{prefix}.weight"] = self.state[f"{prefix}.weight"][:, index]


# -- ASNA ----------------------------------------------------------------------------------------
def detect_variant(graph: KerasGraph) -> str:
    names = graph.class_names()
    if "ConvLSTM2D" in names:
        return "tiled"
    if names & {"GlobalAveragePooling2D", "Multiply"}:
        return "attention"
    return "bn" if "BatchNormalization" in names else "simple"


def _input_size(graph: KerasGraph) -> int | None:
    shapes = [c.config.get("batch_input_shape") or c.config.get("batch_shape") for c in graph.inputs]
    sides = {s for shape in shapes if shape for s in shape[1:3]}
    return int(sides.pop()) if len(sides) == 1 and None not in sides else None


def _check_scaling(graph: KerasGraph) -> None:
    for call in graph.order:
        if call.class_name == "Rescaling":
            scale, offset = float(call.config.get("scale", 1.0)), float(call.config.get("offset", 0.0))
            if abs(scale * 127.5 - 1) > 1e-6 or abs(offset + 1) > 1e-6:
                raise graph.error(f"layer {call.describe()} scales inputs by {scale:g} + {offset:g}; ASNA expects "
                                  f"(x - 127.5) / 127.5 of 0..255 BGR images")


def _asna_match(graph: KerasGraph) -> tuple[AsnaConfig, dict[str, torch.Tensor]]:
    variant = detect_variant(graph)
    m = _Matcher(graph, f"{'an' if variant == 'attention' else 'a'} {variant} ASNA")
    bn = variant in ("bn", "attention")
    leaky = ("leaky_relu",)
    sizes: dict[str, Any] = {"variant": variant}

    def block(role: str, prefix: str, strided: bool = False) -> tuple[int, int, int, int]:
        call = m.take(("Conv2D",), role)
        shape = m.conv2d(call, f"{prefix}.conv", role, strided)
        m.check_activation(call, leaky, role)
        if strided:
            sizes.setdefault("strides", []).append(shape[3])
        if bn:
            m.batch_norm(m.take(("BatchNormalization",), f"the BatchNorm after {role}"), f"{prefix}.norm", call)
        return shape

    if variant == "tiled":
        lstm = m.take(("ConvLSTM2D",), "the tile-sequence ConvLSTM2D")
        cfg = lstm.config
        if cfg.get("padding") != "same" or cfg.get("return_sequences") or cfg.get("activation", "tanh") != "tanh" \
                or cfg.get("recurrent_activation", "hard_sigmoid") not in ("hard_sigmoid", "sigmoid"):
            raise m.fail(lstm, "is not ConvLSTM2D(padding='same', activation tanh, recurrent hard_sigmoid or "
                               "sigmoid, last state only)")
        w = graph.layer_weights(lstm, "kernel", "recurrent_kernel")
        m.state["encoder.lstm.input_conv.weight"] = _conv_oihw(w["kernel"])
        m.state["encoder.lstm.input_conv.bias"] = (_tensor(w["bias"]) if "bias" in w
                                                   else torch.zeros(w["kernel"].shape[-1]))
        m.state["encoder.lstm.recurrent_conv.weight"] = _conv_oihw(w["recurrent_kernel"])
        m.roles[lstm.owner] = "encoder.lstm"
        sizes.update(lstm_filters=int(w["recurrent_kernel"].shape[2]), lstm_kernel=int(w["kernel"].shape[0]),
                     lstm_recurrent_activation=cfg.get("recurrent_activation", "hard_sigmoid"))
    colour = m.take(("Conv2D",), "the 1x1 colour convolution")
    sizes["colour_kernel"] = m.conv2d(colour, "encoder.colour", "the colour convolution")[2]
    m.check_activation(colour, ("linear",), "the colour convolution")
    encoder = [block(f"encoder level {k + 1}", f"encoder.blocks.{k}") for k in range(4)]
    bottleneck_call = m.peek()
    bottleneck = block("the decoder bottleneck", "decoder.bottleneck")
    if bottleneck_call is not None and graph.model_inputs_of(bottleneck_call) != frozenset({1}):
        raise m.fail(bottleneck_call, "starts the decoder from the first input's features (ASNA's starts from "
                                      "input 2's)")
    decoder_owners = {owner for owner, prefix in m.roles.items() if prefix.startswith("decoder.")}

    def skip_or_up(owners: set) -> str:
        return "up" if owners & decoder_owners else "skip"

    previous = bottleneck[1]
    merges = []
    for j, level in enumerate((3, 2, 1, 0)):
        call = m.peek()
        prefix = "decoder.strided.0" if j == 3 else f"decoder.merges.{j}"
        shape = block("the stride-4 convolution" if j == 3 else f"decoder merge {j + 1}", prefix, strided=j == 3)
        order = m.concat_order(call, skip_or_up, ["up", "skip"])
        m.permute_inputs(f"{prefix}.conv", order, ["up", "skip"], {"up": previous, "skip": encoder[level][1]})
        decoder_owners |= {o for o, p in m.roles.items() if p.startswith("decoder.")}
        merges.append(shape)
        previous = shape[1]
    last = block("the stride-2 convolution", "decoder.strided.1", strided=True)
    sizes["filters"] = [s[1] for s in encoder] + [bottleneck[1]] + [s[1] for s in merges] + [last[1]]
    sizes["encoder_kernels"] = [s[2] for s in encoder]
    sizes["decoder_kernels"] = [bottleneck[2]] + [s[2] for s in merges[:3]]
    sizes["strided_kernels"] = [merges[3][2], last[2]]

    if variant == "attention":
        _match_attention(m, sizes, last[1])
    hidden = m.take(("Dense",), "the hidden Dense layer")
    m.check_activation(hidden, ("relu",), "the hidden Dense layer")
    flat, sizes["dense"] = m.dense(hidden, "decoder.hidden")
    squash = m.take(("Dense",), "the Dense(1) sigmoid/tanh layer")
    sizes["head_activation"] = m.check_activation(squash, ("sigmoid", "tanh"), "the Dense(1) squashing layer")
    m.dense(squash, "decoder.squash")
    affine = m.take(("Dense",), "the final linear Dense(1)")
    m.check_activation(affine, ("linear",), "the final Dense(1)")
    m.dense(affine, "decoder.affine")
    m.finish()
    for rate in (c.config.get("rate") for c in graph.order if c.class_name == "Dropout"):
        sizes["dropout"] = float(rate)
    sizes["alpha"] = _common_alpha(m)
    channels = sizes.get("residual_channels") if variant == "attention" else sizes["filters"][9]
    final = int(round((flat / channels) ** 0.5))
    if final * final * channels != flat:
        raise m.fail(hidden, f"takes {flat} features, not a square map of {channels} channels")
    encoder_size = final * sizes["strides"][0] * sizes["strides"][1]
    input_size = _input_size(graph) or encoder_size * (4 if variant == "tiled" else 1)
    if variant == "tiled":
        sizes["tiles"] = input_size // encoder_size
    sizes["input_size"] = input_size
    _check_scaling(graph)
    try:
        config = AsnaConfig(**sizes)
    except ValueError as exc:
        raise graph.error(f"the sizes read from the file do not make an ASNA network ({exc})") from None
    if config.final_size != final:
        raise m.fail(hidden, f"takes a {final}x{final} map, but {input_size}x{input_size} inputs give "
                             f"{config.final_size}x{config.final_size}")
    return config, m.state


def _match_attention(m: _Matcher, sizes: dict[str, Any], in_channels: int) -> None:
    graph = m.graph
    conv_a = m.take(("Conv2D",), "the attention block's first convolution")
    _, hidden, kernel, _ = m.conv2d(conv_a, "decoder.attention.conv_a", "the attention block")
    m.check_activation(conv_a, ("relu",), "the attention block's first convolution")
    m.batch_norm(m.take(("BatchNormalization",), "the attention block's BatchNorm"), "decoder.attention.norm", conv_a)
    conv_b = m.take(("Conv2D",), "the attention block's second convolution")
    _, channels, _, _ = m.conv2d(conv_b, "decoder.attention.conv_b", "the attention block")
    m.check_activation(conv_b, ("linear",), "the attention block's second convolution")
    gates = [m.take(("Conv2D", "Dense"), "a gate of the attention block") for _ in range(4)]
    pairs = [gates[:2], gates[2:]]
    for first, second in pairs:
        if not any(first.owner in graph.upstream_weighted(s) for s in second.inputs):
            raise m.fail(second, f"does not follow {first.describe()} in an attention gate")
    pooled = [any(n.class_name.startswith("GlobalAveragePooling") for n in graph.weightless_path(p[0])) for p in pairs]
    if sorted(pooled) != [False, True]:
        raise m.fail(gates[0], "starts attention gates of which not exactly one pools globally (channel gate)")
    channel, pixel = (pairs[0], pairs[1]) if pooled[0] else (pairs[1], pairs[0])
    gate_widths = []
    for (first, second), name in ((channel, "channel_gate"), (pixel, "pixel_gate")):
        gate_widths.append(m.conv2d(first, f"decoder.attention.{name}.0", "an attention gate")[1])
        m.check_activation(first, ("relu",), "the first layer of an attention gate")
        m.conv2d(second, f"decoder.attention.{name}.1", "an attention gate")
        m.check_activation(second, ("sigmoid",), "the last layer of an attention gate")
    fuse = m.take(("Conv2D",), "the attention block's 1x1 fusion")
    _, out_channels, _, _ = m.conv2d(fuse, "decoder.attention.fuse", "the attention fusion")
    m.check_activation(fuse, ("linear",), "the attention fusion")
    channel_owner, pixel_owner = channel[1].owner, pixel[1].owner

    def part(owners: set) -> str:
        return "channel" if channel_owner in owners else "pixel" if pixel_owner in owners else "x"

    native = ["x", "channel", "pixel"]
    order = m.concat_order(fuse, part, native)
    m.permute_inputs("decoder.attention.fuse", order, native, {"x": in_channels, "channel": channels,
                                                              "pixel": channels})
    blocks = 0
    while m.peek() is not None and m.peek().class_name == "Conv2D":
        for name, act in (("conv_a", "relu"), ("conv_b", "linear")):
            call = m.take(("Conv2D",), f"residual block {blocks + 1}")
            residual_kernel = m.conv2d(call, f"decoder.residual.{blocks}.{name}", "a residual block")[2]
            m.check_activation(call, (act,), f"residual block {blocks + 1}")
        blocks += 1
    sizes.update(attention_widths=[hidden, channels], gate_widths=gate_widths, attention_kernel=kernel,
                 residual_channels=out_channels, residual_blocks=blocks)
    if blocks:
        sizes["residual_kernel"] = residual_kernel


def _common_alpha(m: _Matcher) -> float:
    if not m.alphas:
        raise m.graph.error("no LeakyReLU found after the encoder convolutions; the file is not an ASNA model")
    first_call, alpha = m.alphas[0]
    for call, other in m.alphas[1:]:
        if abs(other - alpha) > 1e-6:
            raise m.fail(call, f"is followed by LeakyReLU({other:g}) while {first_call.describe()} uses {alpha:g} "
                               f"(iqa's ASNA has one alpha)")
    return float(f"{alpha:.7g}")


# -- sorter --------------------------------------------------------------------------------------
def _sorter_match(graph: KerasGraph) -> tuple[SorterConfig, dict[str, torch.Tensor]]:
    m = _Matcher(graph, "a learned-sorter")
    channels, kernels, norms, shared = [], [], [], set()
    k = 0
    while m.peek() is not None and m.peek().class_name == "Conv1D":
        conv = m.take(("Conv1D",), f"sorter layer {k + 1}")
        cfg = conv.config
        if cfg.get("padding") != "same" or tuple(cfg.get("strides", (1,))) != (1,) or \
                tuple(cfg.get("dilation_rate", (1,))) != (1,):
            raise m.fail(conv, "is not a Conv1D with 'same' padding and stride 1")
        m.check_activation(conv, ("linear",), "a sorter convolution (PReLU follows)")
        w = graph.layer_weights(conv, "kernel")
        m.state[f"layers.{k}.conv.weight"] = _tensor(w["kernel"].transpose(2, 1, 0))
        m.state[f"layers.{k}.conv.bias"] = _tensor(w["bias"]) if "bias" in w else torch.zeros(w["kernel"].shape[2])
        channels.append(int(w["kernel"].shape[2]))
        kernels.append(int(w["kernel"].shape[0]))
        has_bn = m.peek() is not None and m.peek().class_name == "BatchNormalization"
        if has_bn:
            m.batch_norm(m.take(("BatchNormalization",), "a sorter BatchNorm"), f"layers.{k}.norm", conv)
        norms.append(has_bn)
        prelu = m.take(("PReLU",), f"the PReLU of sorter layer {k + 1}")
        alpha = graph.layer_weights(prelu, "alpha")["alpha"]
        alpha = alpha.reshape(-1, alpha.shape[-1])
        shared.add(alpha.shape[0] == 1)
        m.state[f"layers.{k}.act.alpha"] = _tensor(alpha.T)
        k += 1
    if k == 0:
        raise m.fail(m.peek(), "is where a learned sorter starts with a Conv1D")
    dense = m.take(("Dense",), "the sorter's output Dense layer")
    m.check_activation(dense, ("linear",), "the sorter's output")
    flat, length = m.dense(dense, "dense")
    m.finish()
    if len(shared) != 1:
        raise graph.error("the sorter's PReLU layers mix shared and per-position slopes; iqa rebuilds one kind")
    try:
        config = SorterConfig(length=length, channels=tuple(channels), kernels=tuple(kernels), batch_norm=tuple(norms),
                              shared_alpha=shared.pop())
    except ValueError as exc:
        raise graph.error(f"the sizes read from the file do not make a sorter ({exc})") from None
    if flat != length * channels[-1]:
        raise m.fail(dense, f"takes {flat} features, not {length} positions x {channels[-1]} channels")
    return config, m.state


# -- public --------------------------------------------------------------------------------------
def keras_family(graph: KerasGraph) -> str:
    """'sorter' for a Conv1D network, else 'asna'."""
    return "sorter" if "Conv1D" in graph.class_names() else "asna"


def _load(graph: KerasGraph, family: str):
    from ..weights import load_strict

    config, state = (_sorter_match if family == "sorter" else _asna_match)(graph)
    model = Sorter(config) if family == "sorter" else AsnaNet(config)
    load_strict(model, state, source=str(graph.path))
    return model.eval()


def import_asna(path: str | Path) -> AsnaNet:
    """A released ASNA Keras model as a native :class:`AsnaNet` (eval mode)."""
    graph = read_keras_model(path)
    if keras_family(graph) != "asna":
        raise graph.error("holds a learned sorter (Conv1D layers), not an ASNA network (use import_sorter)")
    return _load(graph, "asna")


def import_sorter(path: str | Path) -> Sorter:
    """A Keras learned sorter as a native :class:`Sorter` (eval mode)."""
    graph = read_keras_model(path)
    if keras_family(graph) != "sorter":
        raise graph.error("holds no Conv1D layers: not a learned sorter")
    return _load(graph, "sorter")


@dataclass(frozen=True)
class KerasConversion:
    """What :func:`convert_keras` wrote."""

    source: Path
    output: Path
    family: str
    config: dict

    def to_dict(self) -> dict:
        return {"source": str(self.source), "output": str(self.output), "family": self.family, "config": self.config}


def convert_keras(source: str | Path, output: str | Path) -> KerasConversion:
    """Convert a Keras ASNA or sorter .hdf5 into a native checkpoint (strict, weights_only loadable)."""
    from ..weights import save_family_checkpoint

    graph = read_keras_model(source)
    family = keras_family(graph)
    model = _load(graph, family)
    save_family_checkpoint(output, family, model, model.config.to_dict(), extra={"source": Path(source).name})
    return KerasConversion(Path(source), Path(output), family, model.config.to_dict())
