"""The pinned transformers still behaves as KDTrainer relies on (llavakd.train.hf_contract).

Each test drives transformers' own Trainer with a probe subclass and a two-parameter model, so it
fails on the item whose behaviour changed, not somewhere inside a training run.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from llavakd.train.hf_contract import CONTRACT


class Line(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0]))

    def forward(self, x):
        return x @ self.w


class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i), 1.0])}


def collate(items):
    return {"x": torch.stack([it["x"] for it in items])}


class Probe(Trainer):
    """Records each overridden hook; the loss is sum((x w)^2) over the micro-batch (unscaled)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: dict[str, list] = {}
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = True

    def _note(self, name, value=None):
        self.calls.setdefault(name, []).append(value)

    def _get_train_sampler(self, train_dataset=None):
        self._note("sampler")
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def _get_num_items_in_batch(self, batch_samples, device):
        self._note("num_items", len(batch_samples))
        return torch.tensor(float(len(batch_samples)) * 100.0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._note("compute_loss", (float(num_items_in_batch), self.current_gradient_accumulation_steps))
        return (model(**inputs) ** 2).sum()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._note("load", resume_from_checkpoint)
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _get_output_dir(self, trial):
        self._note("output_dir")
        return getattr(self, "staging", None) or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        self._note("save", self.state.global_step)
        return super()._save_checkpoint(model, trial)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                max_steps=2, learning_rate=0.1, save_strategy="steps", save_steps=1, logging_steps=1,
                report_to=[], use_cpu=True, disable_tqdm=True, lr_scheduler_type="constant", optim="sgd",
                max_grad_norm=0.0)
    base.update(kw)
    return TrainingArguments(**base)


def _trained(tmp_path, **kw):
    torch.manual_seed(0)
    t = Probe(model=Line(), args=_args(tmp_path, **kw), train_dataset=Data(), data_collator=collate)
    t.train()
    return t


def test_every_reliance_names_a_member_that_exists():
    for item in CONTRACT:
        if item.kind == "argument":  # TrainingArguments(<field>=...)
            field = item.name.split("(")[1].split("=")[0]
            assert field in TrainingArguments.__dataclass_fields__, item.name
            continue
        name = item.name.split("(")[0].split(" ")[0]
        owner, attr = name.split(".", 1)
        cls = {"Trainer": Trainer, "TrainingArguments": TrainingArguments}[owner]
        if item.kind == "private":
            assert callable(getattr(cls, attr, None)), item.name
            params = [p for p in inspect.signature(getattr(cls, attr)).parameters if p != "self"]
            wanted = [p.strip().split("=")[0] for p in item.name.split("(")[1].rstrip(")").split(",") if p.strip()]
            assert params[:len(wanted)] == wanted, (item.name, params)
    assert len(CONTRACT) >= 10


def test_the_train_dataloader_draws_from_our_sampler(tmp_path):
    t = Probe(model=Line(), args=_args(tmp_path), train_dataset=Data(), data_collator=collate)
    t.get_train_dataloader()
    assert t.calls.get("sampler"), "Trainer no longer asks _get_train_sampler for the train sampler"


def test_num_items_is_counted_once_per_step_over_its_micro_batches_and_reaches_compute_loss(tmp_path):
    t = _trained(tmp_path)
    assert t.calls["num_items"] == [2, 2]  # one call per optimizer step, with both micro-batches
    assert t.calls["compute_loss"] == [(200.0, 2)] * 4  # our count and the step's micro-batches, each time


def test_a_loss_scaled_for_accumulation_is_not_divided_again(tmp_path):
    """With loss_is_scaled_for_ga the gradient is that of the returned loss itself (no 1/accumulation)."""
    torch.manual_seed(0)
    t = Probe(model=Line(), args=_args(tmp_path), train_dataset=Data(), data_collator=collate)
    t.current_gradient_accumulation_steps = 4
    batch = {"x": torch.tensor([[3.0, 1.0], [1.0, 2.0]])}
    t.model.zero_grad()
    t.training_step(t.model, dict(batch), num_items_in_batch=torch.tensor(1.0))
    got = t.model.w.grad.clone()
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    ((batch["x"] @ w) ** 2).sum().backward()
    torch.testing.assert_close(got, w.grad)
    # negative control: unset, transformers decides from model_accepts_loss_kwargs (False) and divides
    t.loss_is_scaled_for_ga = None
    t.model.zero_grad()
    t.training_step(t.model, dict(batch), num_items_in_batch=torch.tensor(1.0))
    torch.testing.assert_close(t.model.w.grad, w.grad / 4)


def test_checkpoints_go_under_get_output_dir_at_each_save_step_and_resume_loads_through_our_hook(tmp_path):
    t = _trained(tmp_path)
    assert t.calls["save"] == [1, 2] and t.calls["output_dir"]
    assert (tmp_path / "out" / "checkpoint-1").is_dir() and (tmp_path / "out" / "checkpoint-2").is_dir()

    staged = Probe(model=Line(), args=_args(tmp_path / "b"), train_dataset=Data(), data_collator=collate)
    staged.staging = str(tmp_path / "staging")
    staged.train()
    assert (tmp_path / "staging" / "checkpoint-1").is_dir()  # _save_checkpoint wrote where we said
    assert not (tmp_path / "b" / "out" / "checkpoint-1").exists()

    again = Probe(model=Line(), args=_args(tmp_path, max_steps=3), train_dataset=Data(), data_collator=collate)
    again.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert again.calls["load"] == [str(tmp_path / "out" / "checkpoint-2")]


def test_save_writes_a_plain_models_weights(tmp_path):
    from safetensors.torch import load_file

    t = Probe(model=Line(), args=_args(tmp_path), train_dataset=Data(), data_collator=collate)
    t._save(str(tmp_path / "plain"))
    weights = load_file(str(tmp_path / "plain" / "model.safetensors"))
    torch.testing.assert_close(weights["w"], torch.tensor([1.0, -2.0]))


@pytest.mark.parametrize("ratio,steps,want", [(0.03, 100, 3), (0.5, 10, 5), (0.0, 10, 0)])
def test_warmup_steps_below_one_are_a_fraction_of_the_steps(tmp_path, ratio, steps, want):
    assert _args(tmp_path, warmup_steps=ratio).get_warmup_steps(steps) == want
    assert _args(tmp_path, warmup_steps=2).get_warmup_steps(steps) == 2  # at or above 1: steps
