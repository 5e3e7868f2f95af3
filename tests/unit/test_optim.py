import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from models.module import ClassifierModule
from models.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from tasks.config import ConfigError, load_config

SPEC = {
    "arch": "cnn",
    "input_shape": [1, 8, 8],
    "n_outputs": 3,
    "dropout": 0.0,
    "options": {"channels": 4, "hidden": 8},
}


def _loaders():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=gen)
    y = torch.arange(48) % 3
    x[torch.arange(48), 0, y, y] += 3.0  # a learnable signal
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=16), DataLoader(data, batch_size=16)


def _fit(epochs: int, **hp) -> tuple[ClassifierModule, list[float], list[float]]:
    L.seed_everything(0, verbose=False)
    module = ClassifierModule(spec=SPEC, max_epochs=epochs, **hp)
    lrs: list[float] = []
    losses: list[float] = []

    class Record(L.Callback):
        # train/loss is logged by the module's on_train_epoch_end, after callbacks' hooks
        def on_train_epoch_start(self, trainer, pl_module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
            if "train/loss" in trainer.callback_metrics:
                losses.append(float(trainer.callback_metrics["train/loss"]))

        def on_fit_end(self, trainer, pl_module):
            losses.append(float(trainer.callback_metrics["train/loss"]))

    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
        num_sanity_val_steps=0,
    )
    train, val = _loaders()
    trainer.fit(module, train, val)
    return module, lrs, losses


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_optimizer_and_schedule_builds_and_steps(optimizer, scheduler):
    _, lrs, losses = _fit(3, optimizer=optimizer, scheduler=scheduler, lr=0.01)
    assert len(lrs) == len(losses) == 3 and all(lr > 0 for lr in lrs)
    assert all(torch.isfinite(torch.tensor(losses)))
    if scheduler in ("cosine", "step"):
        assert lrs[-1] < lrs[0]


def test_loss_decreases_with_sgd_nesterov():
    _, _, losses = _fit(6, optimizer="sgd", nesterov=True, lr=0.05, scheduler="none")
    assert losses[-1] < losses[0]


def test_warmup_ramps_then_decays():
    _, lrs, _ = _fit(5, scheduler="cosine", warmup_epochs=2, lr=0.01)
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(0.01)
    assert lrs[4] < lrs[2]


def test_step_schedule_decays_by_gamma():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(params, "sgd", lr=1.0, momentum=0.0)
    sched = build_scheduler(opt, "step", max_epochs=6, step_size=2, gamma=0.5)["scheduler"]
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def _one_sgd_step(grad_clip: str) -> tuple[float, float]:
    """(gradient norm before clipping, norm of the step / lr) of one plain-SGD step."""
    from tasks.train import make_trainer

    def flat(tensors) -> torch.Tensor:
        return torch.cat([t.detach().flatten().clone() for t in tensors])

    seen: dict[str, torch.Tensor] = {}

    class Record(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # before clipping
            seen["grad"] = flat(p.grad for p in pl_module.parameters())
            seen["before"] = flat(pl_module.parameters())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["after"] = flat(pl_module.parameters())

    cfg = load_config("params.yaml", [f"train.grad_clip={grad_clip}"])
    L.seed_everything(0, verbose=False)
    module = ClassifierModule(
        spec=SPEC, optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, scheduler="none"
    )
    trainer = make_trainer(cfg, 1, [Record()], limit_train_batches=1, limit_val_batches=0)
    train, val = _loaders()
    trainer.fit(module, train, val)
    step = torch.linalg.vector_norm(seen["before"] - seen["after"]).item()  # lr 1: the gradient
    return torch.linalg.vector_norm(seen["grad"]).item(), step


def test_gradient_clipping_bounds_the_step(workspace):
    grad, step = _one_sgd_step("null")
    assert grad > 0.1 and step == pytest.approx(grad, rel=1e-4)  # unclipped: the whole gradient
    grad, step = _one_sgd_step("0.01")
    assert grad > 0.1 and step == pytest.approx(0.01, rel=1e-3)  # clipped to the norm 0.01


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.optimizer=lbfgs"], "train.optimizer: Input should be 'adamw', 'adam', 'sgd'"),
        (["train.nesterov=true"], "train: nesterov needs optimizer sgd with momentum > 0"),
        (
            ["train.scheduler=plateau", "train.warmup_epochs=2"],
            "train: warmup_epochs applies to cosine and step, not to scheduler plateau",
        ),
        (["train.warmup_epochs=40"], "train: warmup_epochs must be below max_epochs"),
        (["train.grad_clip=0"], "train.grad_clip: Input should be greater than 0"),
    ],
)
def test_invalid_training_combinations_are_named(workspace, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("params.yaml", overrides)
    assert message in str(err.value)
