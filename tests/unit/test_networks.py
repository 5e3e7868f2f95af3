"""Networks and augmentation: real torch on tiny random batches."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from models.augment import (
    ImageAugment,
    RandomAffine,
    SequenceAugment,
    build_augment,
)
from models.networks import NetSpec, activation, build_network, load_network

torch.set_num_threads(1)

SHAPES = {
    "mlp": (6,),
    "cnn": (1, 8, 8),
    "resnet": (1, 8, 8),
    "cnn1d": (12, 3),
    "fcn": (12, 3),
    "resnet1d": (12, 3),
    "rnn": (12, 3),
}
SMALL = {
    "mlp": {"width": 32},
    "cnn": {"channels": 8, "hidden": 16},
    "resnet": {"channels": 8},
    "cnn1d": {"channels": 8, "hidden": 16},
    "fcn": {"channels": 8},
    "resnet1d": {"channels": 8},
    "rnn": {"hidden": 16},
}
ARCHS = {
    "mlp": ("mlp", SMALL["mlp"]),
    "mlp-on-images": ("mlp", SMALL["mlp"]),
    "cnn": ("cnn", SMALL["cnn"]),
    "resnet": ("resnet", SMALL["resnet"]),
    "cnn1d": ("cnn1d", SMALL["cnn1d"]),
    "fcn": ("fcn", SMALL["fcn"]),
    "resnet1d": ("resnet1d", SMALL["resnet1d"]),
    "rnn-gru": ("rnn", SMALL["rnn"]),
    "rnn-lstm-bi-stacked": (
        "rnn",
        {"cell": "lstm", "hidden": 16, "layers": 2, "bidirectional": True},
    ),
}


def spec_for(case: str, n_outputs: int, **kw) -> NetSpec:
    arch, options = ARCHS[case]
    shape = (1, 8, 8) if case == "mlp-on-images" else SHAPES[arch]
    return NetSpec(arch=arch, input_shape=shape, n_outputs=n_outputs, options=options, **kw)


@pytest.mark.parametrize("case", list(ARCHS))
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_every_arch_outputs_the_right_shape_and_learns(case: str, task: str):
    torch.manual_seed(0)
    n_out = 3 if task == "classification" else 1
    spec = spec_for(case, n_out, dropout=0.0)
    x = torch.randn(32, *spec.input_shape)
    if task == "classification":
        y, loss_fn = torch.randint(0, 3, (32,)), nn.functional.cross_entropy
    else:
        y, loss_fn = torch.randn(32, 1), nn.functional.mse_loss
    net = build_network(spec)
    assert net(x).shape == (32, n_out)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    ("arch", "sizes"),
    [
        ("fcn", [(1, 3), (7, 3), (251, 3)]),
        ("resnet1d", [(1, 3), (9, 3), (427, 3)]),
        ("cnn1d", [(5, 3), (40, 3)]),
        ("rnn", [(2, 3), (30, 3)]),
        ("resnet", [(1, 1, 1), (1, 7, 13), (1, 32, 32)]),
    ],
)
def test_networks_take_any_length_or_size(arch: str, sizes: list[tuple[int, ...]]):
    net = build_network(NetSpec(arch, SHAPES[arch], 4, options=SMALL[arch])).eval()
    for size in sizes:
        out = net(torch.randn(2, *size))
        assert out.shape == (2, 4) and torch.isfinite(out).all()


def test_fcn_is_three_conv_bn_blocks_with_global_pooling():
    net = build_network(NetSpec("fcn", (50, 2), 3))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (2, 64, 8),
        (64, 128, 5),
        (128, 64, 3),
    ]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 3
    # even kernels keep the length: the features have as many steps as the input
    assert net.features(torch.zeros(1, 2, 50)).shape == (1, 64, 50)


def test_resnet1d_has_three_residual_blocks_of_three_convs():
    net = build_network(NetSpec("resnet1d", (50, 1), 3))
    assert len(net.features) == 3
    for block in net.features:
        assert sum(isinstance(m, nn.Conv1d) for m in block.body.modules()) == 3


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "gelu", "tanh", "sigmoid"])
def test_each_activation_builds_and_runs(name: str):
    x = torch.linspace(-2, 2, 9)
    expected = {
        "relu": torch.relu(x),
        "leaky_relu": nn.functional.leaky_relu(x),
        "gelu": nn.functional.gelu(x),
        "tanh": torch.tanh(x),
        "sigmoid": torch.sigmoid(x),
    }[name]
    assert torch.allclose(activation(name)(x), expected)
    net = build_network(NetSpec("cnn", (1, 8, 8), 3, activation=name, options=SMALL["cnn"]))
    assert any(type(m) is type(activation(name)) for m in net.modules())
    assert net(torch.randn(4, 1, 8, 8)).shape == (4, 3)


def linears(net: nn.Module) -> list[nn.Linear]:
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


def test_default_init_keeps_pytorch_init():
    torch.manual_seed(0)
    net = build_network(NetSpec("mlp", (400,), 1, batch_norm=False, init="default"))
    first = linears(net)[0]
    assert first.weight.abs().max() <= 1 / math.sqrt(400)  # PyTorch's kaiming_uniform(a=sqrt 5)
    assert first.bias.abs().sum() > 0


@pytest.mark.parametrize(("act", "gain"), [("relu", math.sqrt(2)), ("tanh", 5 / 3)])
def test_kaiming_init_matches_the_activation_gain(act: str, gain: float):
    torch.manual_seed(0)
    spec = NetSpec("mlp", (400,), 1, activation=act, batch_norm=False, init="kaiming")
    first = linears(build_network(spec))[0]  # 128 x 400
    assert first.weight.std().item() == pytest.approx(gain / math.sqrt(400), rel=0.05)
    assert torch.all(first.bias == 0)


def test_xavier_init_is_bounded_uniform():
    torch.manual_seed(0)
    net = build_network(NetSpec("mlp", (400,), 1, batch_norm=False, init="xavier"))
    first = linears(net)[0]
    bound = math.sqrt(6 / (400 + 128))
    assert first.weight.abs().max() <= bound
    assert first.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.all(first.bias == 0)


def test_orthogonal_init_gives_orthogonal_weights_including_rnn_gates():
    torch.manual_seed(0)
    mlp = build_network(NetSpec("mlp", (6,), 1, batch_norm=False, init="orthogonal"))
    square = linears(mlp)[1].weight  # 128 x 128
    assert torch.allclose(square @ square.T, torch.eye(128), atol=1e-5)
    rnn = build_network(
        NetSpec("rnn", (12, 3), 1, init="orthogonal", options={"cell": "lstm", "hidden": 16})
    )
    for gate in rnn.rnn.weight_hh_l0.detach().chunk(4):
        assert torch.allclose(gate @ gate.T, torch.eye(16), atol=1e-5)
    assert torch.all(rnn.rnn.bias_hh_l0 == 0)


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        (NetSpec("transformer", (6,), 1), "transformer"),
        (NetSpec("mlp", (6,), 1, activation="swish"), "swish"),
        (NetSpec("mlp", (6,), 1, init="lecun"), "lecun"),
        (NetSpec("cnn", (1, 8, 8), 1, options={"depth": 3}), "depth"),
        (NetSpec("rnn", (12, 3), 1, options={"cell": "vanilla"}), "vanilla"),
        (NetSpec("cnn", (8, 8), 1), "(C, H, W)"),
    ],
)
def test_unknown_names_raise_with_the_name(spec: NetSpec, name: str):
    with pytest.raises(ValueError, match=name.replace("(", r"\(").replace(")", r"\)")):
        build_network(spec)


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown activation 'x' \(known: relu, "):
        activation("x")


def test_netspec_round_trips_through_json():
    spec = NetSpec(
        "rnn", (12, 3), 4, "gelu", 0.1, False, "xavier", {"cell": "lstm", "bidirectional": True}
    )
    back = NetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    assert isinstance(back.input_shape, tuple)
    with pytest.raises(ValueError, match="colour"):
        NetSpec.from_dict({**spec.to_dict(), "colour": "red"})


def test_load_network_restores_the_saved_state(tmp_path):
    torch.manual_seed(0)
    spec = NetSpec("cnn", (1, 8, 8), 3, options=SMALL["cnn"])
    net = build_network(spec)
    x = torch.randn(8, 1, 8, 8)
    net(x)  # a train-mode pass moves the batch-norm running stats away from their init
    torch.save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps({"spec": spec.to_dict()}))
    loaded = load_network(tmp_path / "model.json", tmp_path / "model.pt")
    assert not loaded.training
    assert torch.equal(loaded(x), net.eval()(x))


def old_digits_cnn() -> nn.Sequential:
    """The previous DigitsCNN, layer for layer."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(128, 10),
    )


def test_default_cnn_on_digits_is_the_old_model():
    net = build_network(NetSpec("cnn", (1, 8, 8), 10))
    n_params = (1 * 32 * 9 + 64) + (32 * 64 * 9 + 128) + (256 * 128 + 128) + (128 * 10 + 10)
    assert sum(p.numel() for p in net.parameters()) == n_params
    assert net.features(torch.zeros(2, 1, 8, 8)).shape == (2, 64, 2, 2)
    # the same weights give the same outputs
    old = old_digits_cnn()
    new_state = net.state_dict()
    old.load_state_dict(dict(zip(old.state_dict(), new_state.values(), strict=True)))
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(old.eval()(x), net.eval()(x), atol=1e-6)


# --- augmentation -----------------------------------------------------------------------------


def images(n: int = 16) -> torch.Tensor:
    torch.manual_seed(123)
    return torch.randn(n, 3, 8, 8)


def sequences(n: int = 16, t: int = 10) -> torch.Tensor:
    return torch.arange(n * t * 2, dtype=torch.float32).reshape(n, t, 2)


def test_augment_is_identity_when_p_is_zero_or_all_off():
    x, s = images(), sequences()
    on = {"hflip": True, "vflip": True, "brightness": 0.5, "contrast": 0.5}
    assert torch.equal(ImageAugment(p=0.0, **on)(x), x)
    assert torch.equal(ImageAugment(p=1.0, max_shift=0, max_rotation=0)(x), x)
    assert torch.equal(SequenceAugment(p=0.0, jitter=1.0, scale=0.5, max_shift=3)(s), s)
    assert torch.equal(SequenceAugment(p=1.0)(s), s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_augment_keeps_shape_and_dtype(dtype: torch.dtype):
    x, s = images().to(dtype), sequences().to(dtype)
    on = {"hflip": True, "vflip": True, "brightness": 0.5, "contrast": 0.5}
    out = ImageAugment(p=1.0, max_shift=1.0, max_rotation=10.0, **on)(x)
    assert out.shape == x.shape and out.dtype == dtype and not torch.allclose(out, x)
    out = SequenceAugment(p=1.0, jitter=0.1, scale=0.2, max_shift=2)(s)
    assert out.shape == s.shape and out.dtype == dtype and not torch.allclose(out, s)


@pytest.mark.parametrize(("flag", "dim"), [("hflip", 3), ("vflip", 2)])
def test_flips_flip_about_half_the_samples(flag: str, dim: int):
    x = images(64)
    torch.manual_seed(0)
    out = ImageAugment(p=1.0, max_shift=0, max_rotation=0, **{flag: True})(x)
    flipped = [torch.equal(o, xi.flip(dim - 1)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 16 <= sum(flipped) <= 48


def test_brightness_shifts_by_at_most_b_stds_and_contrast_keeps_channel_means():
    x = images()
    out = ImageAugment(p=1.0, max_shift=0, max_rotation=0, brightness=0.3)(x)
    delta = (out - x).flatten(1)
    assert torch.allclose(delta, delta[:, :1].expand_as(delta), atol=1e-6)  # one offset per image
    assert torch.all(delta[:, 0].abs() <= 0.3 * x.flatten(1).std(dim=1, correction=0) + 1e-6)
    out = ImageAugment(p=1.0, max_shift=0, max_rotation=0, contrast=0.4)(x)
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(out.mean(dim=(2, 3), keepdim=True), mean, atol=1e-5)
    centered, before = (out - mean).flatten(1), (x - mean).flatten(1)
    factor = (centered * before).sum(dim=1) / (before * before).sum(dim=1)
    assert torch.allclose(centered, factor[:, None] * before, atol=1e-5)  # one factor per image
    assert torch.all((factor >= 0.6 - 1e-6) & (factor <= 1.4 + 1e-6))


def test_image_augment_applies_affine_exactly_as_random_affine():
    x = images()
    torch.manual_seed(5)
    a = RandomAffine(p=0.5, max_shift=1.0, max_rotation=15.0)(x)
    torch.manual_seed(5)
    b = ImageAugment(p=0.5, max_shift=1.0, max_rotation=15.0)(x)
    assert torch.equal(a, b)
    assert torch.all(a.amin(dim=(1, 2, 3)) >= x.amin(dim=(1, 2, 3)) - 1e-5)  # fills with the min


def edge_shift(seq: torch.Tensor, k: int) -> torch.Tensor:
    if k > 0:
        return torch.cat([seq[:1].expand(k, -1), seq[:-k]])
    if k < 0:
        return torch.cat([seq[-k:], seq[-1:].expand(-k, -1)])
    return seq


def test_sequence_shift_moves_each_sample_by_its_drawn_amount():
    s = sequences(32)
    torch.manual_seed(0)
    out = SequenceAugment(p=1.0, max_shift=3)(s)
    shifts = []
    for o, si in zip(out, s, strict=True):
        matches = [k for k in range(-3, 4) if torch.equal(o, edge_shift(si, k))]
        assert len(matches) == 1
        shifts += matches
    assert len(set(shifts)) > 3


def test_sequence_noise_and_scale():
    s = sequences(64, 50)
    torch.manual_seed(0)
    noise = SequenceAugment(p=1.0, jitter=0.5)(s) - s
    assert noise.std().item() == pytest.approx(0.5, rel=0.05)
    ratio = (SequenceAugment(p=1.0, scale=0.2)(s)[:, 1:] / s[:, 1:]).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio))  # one factor per sample
    assert torch.all((ratio >= 0.8 - 1e-6) & (ratio <= 1.2 + 1e-6))


def test_p_picks_samples():
    s = sequences(64)
    torch.manual_seed(0)
    out = SequenceAugment(p=0.5, jitter=0.1)(s)
    changed = sum(not torch.equal(o, si) for o, si in zip(out, s, strict=True))
    assert 16 <= changed <= 48


def test_augment_is_deterministic_under_a_seed():
    x, s = images(), sequences()
    img = ImageAugment(p=0.7, hflip=True, vflip=True, brightness=0.2, contrast=0.2)
    seq = SequenceAugment(p=0.7, jitter=0.1, scale=0.1, max_shift=2)
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append((img(x), seq(s)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], outs[2][0]) and not torch.equal(outs[0][1], outs[2][1])


def test_build_augment_picks_the_modality_and_its_keys():
    options = {
        "p": 0.3,
        "max_shift": 2.7,
        "max_rotation": 5.0,
        "hflip": True,
        "vflip": False,
        "brightness": 0.1,
        "contrast": 0.2,
        "jitter": 0.05,
        "scale": 0.1,
    }
    img = build_augment("images", options)
    assert isinstance(img, ImageAugment)
    assert (img.p, img.max_shift, img.hflip, img.contrast) == (0.3, 2.7, True, 0.2)
    seq = build_augment("sequences", options)
    assert isinstance(seq, SequenceAugment)
    assert (seq.p, seq.jitter, seq.scale, seq.max_shift) == (0.3, 0.05, 0.1, 2)
    assert isinstance(build_augment("tables", options), nn.Identity)
    with pytest.raises(ValueError, match="audio"):
        build_augment("audio", options)
    with pytest.raises(ValueError, match="mixup"):
        build_augment("images", {**options, "mixup": 0.2})


@pytest.mark.parametrize("arch", ["fcn", "resnet1d", "resnet", "ensemble"])
def test_new_networks_export_with_dynamic_batch_and_length(arch: str):
    from torch.export import Dim, export

    from models.networks import build_ensemble

    batch = Dim("batch", min=1, max=4096)
    if arch == "resnet":
        net = build_network(NetSpec("resnet", (1, 16, 16), 3, options=SMALL["resnet"]))
        dims = {0: batch, 2: Dim("h", min=8, max=1024), 3: Dim("w", min=8, max=1024)}
        x, other = torch.randn(3, 1, 16, 16), torch.randn(5, 1, 23, 31)
    else:
        spec = NetSpec("fcn" if arch == "ensemble" else arch, (50, 2), 3, options={"channels": 4})
        net = (
            build_ensemble(spec, 2, "classification")
            if arch == "ensemble"
            else build_network(spec)
        )
        dims = {0: batch, 1: Dim("length", min=8, max=4096)}
        x, other = torch.randn(3, 50, 2), torch.randn(5, 77, 2)
    net.eval()
    program = export(net, (x,), dynamic_shapes={"x": dims})
    with torch.no_grad():
        assert torch.allclose(program.module()(other), net(other), atol=1e-5)
