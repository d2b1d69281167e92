"""What ``KDTrainer`` relies on in transformers beyond its public API, in one place, with why.

transformers is pinned exactly (pyproject.toml), and ``tests/test_transformers_contract.py``
checks each item below against the installed version: when an upgrade changes one, that test
names it, instead of a training run going quietly wrong. Items marked ``private`` are methods
whose name starts with an underscore; ``flag`` items are documented attributes whose meaning we
depend on; ``argument`` items are TrainingArguments whose reading is easy to get wrong.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reliance:
    name: str
    kind: str  # private | flag | argument
    why: str


CONTRACT: tuple[Reliance, ...] = (
    Reliance("Trainer._get_train_sampler(train_dataset=None)", "private",
             "overridden: the length-grouped sampler (llavakd.data.sampler) must be the one the train "
             "dataloader draws from."),
    Reliance("Trainer._get_num_items_in_batch(batch_samples, device)", "private",
             "overridden: called once per optimizer step with that step's micro-batches; what it returns "
             "reaches compute_loss as num_items_in_batch, so every term is a mean over the whole step."),
    Reliance("Trainer.current_gradient_accumulation_steps", "flag",
             "read: the number of micro-batches of the current step (the loss-part logs average over steps)."),
    Reliance("Trainer.model_accepts_loss_kwargs = False", "flag",
             "set: our compute_loss does all scaling itself; with the flag off, Trainer's own loss paths "
             "(the model's loss from num_items_in_batch, x processes) stay off, and training_step would divide "
             "by the accumulation steps unless loss_is_scaled_for_ga says otherwise."),
    Reliance("Trainer.loss_is_scaled_for_ga = True", "flag",
             "set: compute_loss returns the step's mean already; transformers must not divide it by the "
             "accumulation steps again."),
    Reliance("Trainer._load_from_checkpoint(resume_from_checkpoint, model=None)", "private",
             "overridden: train(resume_from_checkpoint=...) calls it to load weights, and ours loads "
             "strictly through from_pretrained's key conversion (the stock one only warns on missing keys)."),
    Reliance("Trainer._get_output_dir(trial)", "private",
             "overridden: _save_checkpoint writes each checkpoint folder under the folder it returns; ours returns a "
             "staging folder, renamed into place only when complete."),
    Reliance("Trainer._save_checkpoint(model, trial)", "private",
             "overridden: called at every save step; ours stages, renames, writes the COMPLETE marker and "
             "prunes old checkpoints."),
    Reliance("Trainer._save(output_dir)", "private",
             "called: writes a plain model's weights and config without gathering (final/ from a checkpoint "
             "that already holds the last step)."),
    Reliance("TrainingArguments(warmup_steps=<float below 1>)", "argument",
             "our train.warmup_ratio is passed as warmup_steps: transformers 5 reads a value below 1 as a "
             "fraction of the training steps (warmup_ratio is deprecated there)."),
)
