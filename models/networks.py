"""Networks: plain `nn.Module`s built from a typed spec.

Tables: MLP. Images: CNN, ResNet (residual, global average pooling). Sequences: 1-D CNN, FCN and
ResNet-1D (Wang et al. 2017, "Time series classification from scratch with deep neural
networks"; Ismail Fawaz et al. 2019), GRU/LSTM. Every network but the MLP takes any length/size.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
INITS = ("default", "kaiming", "xavier", "orthogonal")
# Each arch's options and their defaults; a key missing from `NetSpec.options` takes these.
ARCH_OPTIONS: dict[str, dict[str, Any]] = {
    "mlp": {"layers": 2, "width": 128},
    "cnn": {"blocks": 2, "channels": 32, "kernel_size": 3, "hidden": 128},
    "resnet": {"blocks": 3, "channels": 16, "kernel_size": 3},
    "cnn1d": {"blocks": 2, "channels": 32, "kernel_size": 5, "hidden": 64},
    "fcn": {"channels": 64, "kernel_sizes": [8, 5, 3]},
    "resnet1d": {"blocks": 3, "channels": 32, "kernel_sizes": [8, 5, 3]},
    "rnn": {"cell": "gru", "hidden": 64, "layers": 1, "bidirectional": False},
}


@dataclass(frozen=True)
class NetSpec:
    """Architecture of a network (saved under "spec" in model.json next to the weights).

    `input_shape` excludes the batch: (F,) for mlp, (C, H, W) for cnn, (T, C) for cnn1d and rnn
    (an mlp flattens inputs of any shape). `options` holds the arch's own keys (`ARCH_OPTIONS`).
    """

    arch: str
    input_shape: tuple[int, ...]
    n_outputs: int
    activation: str = "relu"
    dropout: float = 0.2
    batch_norm: bool = True
    init: str = "default"
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (input_shape as a list)."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetSpec:
        """Inverse of `to_dict`; unknown keys raise ValueError."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown NetSpec key(s) {unknown}")
        return cls(
            **{**d, "input_shape": tuple(d["input_shape"]), "options": dict(d.get("options", {}))}
        )

    def arch_options(self) -> dict[str, Any]:
        """The arch's options with defaults filled in; unknown arch or keys raise ValueError."""
        if self.arch not in ARCH_OPTIONS:
            raise ValueError(f"unknown arch '{self.arch}' (known: {', '.join(ARCH_OPTIONS)})")
        defaults = ARCH_OPTIONS[self.arch]
        for key in self.options:
            if key not in defaults:
                raise ValueError(
                    f"unknown option '{key}' for arch '{self.arch}' (known: {', '.join(defaults)})"
                )
        return {**defaults, **self.options}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (relu, leaky_relu, gelu, tanh, sigmoid)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}' (known: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]()


def _check_rank(spec: NetSpec, rank: int, layout: str) -> None:
    if len(spec.input_shape) != rank:
        raise ValueError(
            f"arch '{spec.arch}' takes input_shape {layout}, got {tuple(spec.input_shape)}"
        )


def _head(in_features: int, hidden: int, spec: NetSpec) -> list[nn.Module]:
    return [
        nn.Dropout(spec.dropout),
        nn.Linear(in_features, hidden),
        activation(spec.activation),
        nn.Dropout(spec.dropout),
        nn.Linear(hidden, spec.n_outputs),
    ]


class MLP(nn.Module):
    """Hidden layers of Linear, BatchNorm1d, activation, Dropout; flattens inputs of any rank."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        opt = spec.arch_options()
        fin, layers = math.prod(spec.input_shape), []
        for _ in range(opt["layers"]):
            layers.append(nn.Linear(fin, opt["width"], bias=not spec.batch_norm))
            if spec.batch_norm:
                layers.append(nn.BatchNorm1d(opt["width"]))
            layers += [activation(spec.activation), nn.Dropout(spec.dropout)]
            fin = opt["width"]
        layers.append(nn.Linear(fin, spec.n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (N, n_outputs) for inputs (N, *input_shape)."""
        return self.net(x.flatten(1))


class CNN(nn.Module):
    """Conv blocks (conv, batch norm, activation, max-pool), then a dropout-regularized head."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        _check_rank(spec, 3, "(C, H, W)")
        opt = spec.arch_options()
        (cin, h, w), k = spec.input_shape, opt["kernel_size"]
        layers: list[nn.Module] = []
        for i in range(opt["blocks"]):
            cout = opt["channels"] * 2**i
            layers.append(nn.Conv2d(cin, cout, k, padding=k // 2, bias=not spec.batch_norm))
            h, w = h + 2 * (k // 2) - k + 1, w + 2 * (k // 2) - k + 1
            if spec.batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(activation(spec.activation))
            if h >= 2 or w >= 2:  # pool only the dimensions that still have room
                pool = (2 if h >= 2 else 1, 2 if w >= 2 else 1)
                layers.append(nn.MaxPool2d(pool))
                h, w = h // pool[0], w // pool[1]
            cin = cout
        self.features = nn.Sequential(*layers)
        out_h, out_w = min(2, h), min(2, w)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d((out_h, out_w)),
            nn.Flatten(),
            *_head(cin * out_h * out_w, opt["hidden"], spec),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (N, n_outputs) for images (N, C, H, W)."""
        return self.head(self.features(x))


class CNN1d(nn.Module):
    """1-D conv blocks over time, global average pooling, then a dropout-regularized head."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        _check_rank(spec, 2, "(T, C)")
        opt = spec.arch_options()
        (t, cin), k = spec.input_shape, opt["kernel_size"]
        layers: list[nn.Module] = []
        for i in range(opt["blocks"]):
            cout = opt["channels"] * 2**i
            layers.append(nn.Conv1d(cin, cout, k, padding=k // 2, bias=not spec.batch_norm))
            t = t + 2 * (k // 2) - k + 1
            if spec.batch_norm:
                layers.append(nn.BatchNorm1d(cout))
            layers.append(activation(spec.activation))
            if t >= 2:
                layers.append(nn.MaxPool1d(2))
                t //= 2
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(*_head(cin, opt["hidden"], spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (N, n_outputs) for sequences (N, T, C)."""
        return self.head(self.features(x.transpose(1, 2)).mean(dim=2))


def _norm(dim: int, channels: int, spec: NetSpec) -> nn.Module:
    if not spec.batch_norm:
        return nn.Identity()
    return nn.BatchNorm1d(channels) if dim == 1 else nn.BatchNorm2d(channels)


def _conv(dim: int, cin: int, cout: int, k: int, spec: NetSpec, stride: int = 1) -> nn.Module:
    conv = nn.Conv1d if dim == 1 else nn.Conv2d
    layer = conv(cin, cout, k, stride=stride, padding=k // 2, bias=not spec.batch_norm)
    if k % 2 or stride != 1:
        return layer
    # an even kernel keeps the length with one step more of padding on the right (as "same",
    # which warns about a padded copy on every call)
    layer.padding = (0,) * dim
    pad = (
        nn.ConstantPad1d((k // 2 - 1, k // 2), 0.0)
        if dim == 1
        else nn.ZeroPad2d((k // 2 - 1, k // 2, k // 2 - 1, k // 2))
    )
    return nn.Sequential(pad, layer)


def _gap_head(channels: int, spec: NetSpec) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(channels, spec.n_outputs))


class FCN(nn.Module):
    """Three blocks of conv, batch norm, activation (channels c, 2c, c), global average pooling."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        _check_rank(spec, 2, "(T, C)")
        opt = spec.arch_options()
        c, cin = opt["channels"], spec.input_shape[1]
        layers: list[nn.Module] = []
        for cout, k in zip((c, 2 * c, c), opt["kernel_sizes"], strict=True):
            layers += [
                _conv(1, cin, cout, k, spec),
                _norm(1, cout, spec),
                activation(spec.activation),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = _gap_head(cin, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (N, n_outputs) for sequences (N, T, C) of any length T."""
        return self.head(self.features(x.transpose(1, 2)).mean(dim=2))


class _Residual(nn.Module):
    """Convs (each but the last followed by the activation) plus a shortcut, then activation."""

    def __init__(
        self, dim: int, cin: int, cout: int, kernels: list[int], spec: NetSpec, stride: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = cin
        for i, k in enumerate(kernels):
            layers += [
                _conv(dim, c, cout, k, spec, stride if i == 0 else 1),
                _norm(dim, cout, spec),
            ]
            if i < len(kernels) - 1:
                layers.append(activation(spec.activation))
            c = cout
        self.body = nn.Sequential(*layers)
        if cin != cout or stride != 1:
            conv = nn.Conv1d if dim == 1 else nn.Conv2d
            self.shortcut: nn.Module = nn.Sequential(
                conv(cin, cout, 1, stride=stride, bias=not spec.batch_norm), _norm(dim, cout, spec)
            )
        else:
            self.shortcut = _norm(dim, cout, spec)
        self.act = activation(spec.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Activation of body(x) + shortcut(x)."""
        return self.act(self.body(x) + self.shortcut(x))


class ResNet1d(nn.Module):
    """Residual blocks of three convs (kernels 8, 5, 3), channels c, 2c, 2c...; global pooling."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        _check_rank(spec, 2, "(T, C)")
        opt = spec.arch_options()
        cin, blocks = spec.input_shape[1], []
        for i in range(opt["blocks"]):
            cout = opt["channels"] * (2 if i else 1)
            blocks.append(_Residual(1, cin, cout, list(opt["kernel_sizes"]), spec))
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.head = _gap_head(cin, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (N, n_outputs) for sequences (N, T, C) of any length T."""
        return self.head(self.features(x.transpose(1, 2)).mean(dim=2))


class ResNet(nn.Module):
    """A small residual CNN with global average pooling; takes images of any size.

    A stem conv, then basic blocks (stride 2 and doubled channels after the first).
    """

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        _check_rank(spec, 3, "(C, H, W)")
        opt = spec.arch_options()
        c, k = opt["channels"], opt["kernel_size"]
        layers: list[nn.Module] = [
            _conv(2, spec.input_shape[0], c, k, spec),
            _norm(2, c, spec),
            activation(spec.activation),
        ]
        cin = c
        for i in range(opt["blocks"]):
            cout = c * 2**i
            layers.append(_Residual(2, cin, cout, [k, k], spec, stride=2 if i else 1))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = _gap_head(cin, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (N, n_outputs) for images (N, C, H, W) of any size."""
        return self.head(self.features(x).mean(dim=(2, 3)))


class RNN(nn.Module):
    """GRU or LSTM; the head reads [final hidden state(s) of the last layer, mean output]."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        _check_rank(spec, 2, "(T, C)")
        opt = spec.arch_options()
        cells = {"gru": nn.GRU, "lstm": nn.LSTM}
        if opt["cell"] not in cells:
            raise ValueError(f"unknown rnn cell '{opt['cell']}' (known: {', '.join(cells)})")
        self.rnn = cells[opt["cell"]](
            spec.input_shape[1],
            opt["hidden"],
            num_layers=opt["layers"],
            batch_first=True,
            dropout=spec.dropout if opt["layers"] > 1 else 0.0,
            bidirectional=opt["bidirectional"],
        )
        self.directions = 2 if opt["bidirectional"] else 1
        features = 2 * opt["hidden"] * self.directions
        norm = [nn.BatchNorm1d(features)] if spec.batch_norm else []
        self.head = nn.Sequential(
            *norm, nn.Dropout(spec.dropout), nn.Linear(features, spec.n_outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (N, n_outputs) for sequences (N, T, C)."""
        out, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c)
        # the last layer's final state per direction: for the backward direction that is its
        # state after reading the whole sequence, which out[:, -1] is not
        last = h[-self.directions :]
        return self.head(torch.cat([*last, out.mean(dim=1)], dim=1))


NETWORKS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet": ResNet,
    "cnn1d": CNN1d,
    "fcn": FCN,
    "resnet1d": ResNet1d,
    "rnn": RNN,
}


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"unknown init '{init}' (known: {', '.join(INITS)})")


def init_weights(net: nn.Module, init: str, act: str = "relu") -> nn.Module:
    """Re-initialize Linear/Conv weights (and RNN weights for "orthogonal"), biases to zero.

    "default" keeps PyTorch's init. "kaiming" uses the gain of `act` where torch knows it (relu,
    leaky_relu, tanh, sigmoid), else relu's. "orthogonal" makes each RNN gate's block orthogonal.
    """
    _check_init(init)
    if init == "default":
        return net
    for module in net.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
            if init == "kaiming":
                nonlinearity = act if act in ("relu", "leaky_relu", "tanh", "sigmoid") else "relu"
                a = 0.01 if act == "leaky_relu" else 0.0  # nn.LeakyReLU's default slope
                nn.init.kaiming_normal_(module.weight, a=a, nonlinearity=nonlinearity)
            elif init == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.orthogonal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.RNNBase) and init == "orthogonal":
            gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
            for name, param in module.named_parameters():
                if name.startswith("weight"):
                    for gate in param.data.chunk(gates, dim=0):  # one square block per gate
                        nn.init.orthogonal_(gate)
                else:
                    nn.init.zeros_(param)
    return net


def build_network(spec: NetSpec) -> nn.Module:
    """Build the network a spec describes; unknown arch, option, activation or init: ValueError."""
    spec.arch_options()  # validate names before anything is built
    activation(spec.activation)
    _check_init(spec.init)
    return init_weights(NETWORKS[spec.arch](spec), spec.init, spec.activation)


class Ensemble(nn.Module):
    """k networks of one spec whose averaged probabilities (regression: values) are the output.

    Classification returns log(mean of the members' softmax): a softmax of it (what inference
    and the pyfunc apply) is exactly the mean probability, and cross-entropy on it is the
    ensemble's log loss. The state dict is the members' under `members.<i>.`.
    """

    def __init__(self, members: list[nn.Module], task: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The members' mean probability as log-probabilities (regression: mean output)."""
        outs = torch.stack([m(x) for m in self.members])
        if self.task != "classification":
            return outs.mean(dim=0)
        return torch.logsumexp(torch.log_softmax(outs, dim=-1), dim=0) - math.log(len(outs))


def build_ensemble(spec: NetSpec, k: int, task: str) -> Ensemble:
    """An ensemble of k freshly built networks of `spec`."""
    return Ensemble([build_network(spec) for _ in range(k)], task)


def load_network(spec_path: str | Path, weights_path: str | Path) -> nn.Module:
    """A network in eval mode from model.json (key "spec") and a weights-only state dict.

    model.json's "ensemble" (k > 1) makes it an `Ensemble` of k members of that spec.
    """
    meta = json.loads(Path(spec_path).read_text())
    spec = NetSpec.from_dict(meta["spec"])
    k = int(meta.get("ensemble", 1))
    net = build_network(spec) if k <= 1 else build_ensemble(spec, k, meta.get("task", ""))
    net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return net.eval()
