"""The transformers Trainer, taught LLaVA-KD's objective, atomic checkpoints and NaN guards.

It overrides and sets some of Trainer's private methods and flags; each is listed with why in
``llavakd.train.hf_contract`` and checked against the pinned transformers by a contract test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from llavakd import terms
from llavakd.distill import LossConfig, distill_loss, fused_distill_loss
from llavakd.distill.parts import is_part_key, parts_of
from llavakd.errors import LlavaKDError
from llavakd.io import COMPLETE_MARKER, marker_problem, write_marker
from llavakd.layout import CHECKPOINT_PREFIX, LOSS_PARTS, checkpoint_name
from llavakd.train.vision import SharedVisionPass

_CKPT = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


class NonFiniteError(LlavaKDError):
    """A loss or gradient became NaN/inf; raised before the optimizer step touches the weights."""


class CheckpointWriteError(LlavaKDError):
    """A checkpoint could not be written (disk full, quota, I/O error); the earlier ones are intact."""


def complete_checkpoints(folder: str | Path) -> list[Path]:
    """checkpoint-N folders with a completion marker, oldest first (truncated ones ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / COMPLETE_MARKER).exists()]


def intact_checkpoints(folder: str | Path) -> tuple[list[Path], list[str]]:
    """Complete checkpoints whose files still match their marker (oldest first), and one line for
    each complete checkpoint skipped because a file changed after its marker was written."""
    intact, skipped = [], []
    for ckpt in complete_checkpoints(folder):
        problem = marker_problem(ckpt)
        if problem is None:
            intact.append(ckpt)
        else:
            skipped.append(f"skipping damaged checkpoint {ckpt}: {problem}")
    return intact, skipped


class KDTrainer(Trainer):
    """CE (+ L_res + L_vis + L_rel with a frozen teacher) computed by llavakd.distill.

    With ``loss.implementation: fused`` (the default) student and teacher run to their last hidden
    states (the LLaVA forward keeps the logits of one position only) and the objective gets the
    LM heads: no [tokens x vocabulary] logits exist beyond one chunk. Under ZeRO-3 the heads are
    partitioned outside the forward, so the run uses the chunked objective on full logits and says
    so in its log and metadata.
    """

    def __init__(self, *args, loss_config: LossConfig, teacher=None, keep_checkpoints: int = 2,
                 group_by_modality_length: bool = False, share_vision: bool = True, tokenizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_modality_length = group_by_modality_length
        self.loss_config = loss_config
        self.teacher = teacher
        self.keep_checkpoints = max(1, int(keep_checkpoints))  # complete checkpoints kept; older ones go
        # Every term is a mean over the positions of the whole optimizer step (all micro-batches, all
        # ranks; counted by _get_num_items_in_batch), so a step does not depend on how the global
        # batch is split: compute_loss scales for accumulation and ranks itself.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = True
        # Bookkeeping stays on the device and is read at logging steps (and by the guard, once a step):
        self._parts_sum: dict[str, torch.Tensor] = {}  # each part times its share, summed since the last log
        self._parts_n = 0.0  # optimizer steps the sums cover
        self._step_finite: torch.Tensor | None = None  # [total, *parts] all finite in this optimizer step
        self._step_keys: list[str] = []
        self._attended = torch.zeros((), dtype=torch.float64)  # attended tokens of the student's micro-batches
        self.positions_seen = 0  # padded positions of the same micro-batches (attended + padding)
        self._at_log = [0.0, 0]  # attended tokens and positions at the last log (padding since then)
        self._t_start = time.perf_counter()
        self._staging: str | None = None
        self._teacher_ready = False
        tie_projector(self.model)
        self._student_taps = LLMTaps(self.model)
        self._teacher_taps = LLMTaps(teacher) if teacher is not None else None
        if parts_of(self.model) is not None and self.is_deepspeed_enabled and \
                self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise LlavaKDError("loss terms with learnable parts under ZeRO-3: the parts are used outside the student's "
                               "forward, where ZeRO-3 keeps them partitioned; use ZeRO-2")
        self._attention_taps = None  # one layer's attention inputs, for the terms that read attention maps
        if loss_config.attention_layers() and teacher is not None:
            from llavakd.distill.attention import AttentionTaps, decoder_layers

            (layer,) = loss_config.attention_layers()  # one layer (validated with the config)
            for who, m in (("student", self.model), ("teacher", teacher)):
                depth = len(decoder_layers(m))
                if not -depth <= layer < depth:
                    raise LlavaKDError(f"an attention term reads layer {layer}, and the {who} has {depth} layers")
            self._attention_taps = (AttentionTaps(decoder_layers(self.model)[layer].self_attn),
                                    AttentionTaps(decoder_layers(teacher)[layer].self_attn))
        self._implementation: str | None = None
        self.share_vision = share_vision  # one vision pass for both when the towers are the same (train/vision.py)
        self.vision = SharedVisionPass()
        self.tokenizer = tokenizer  # on-policy: the end token, padding, and the logged samples
        # on-policy distillation (llavakd.train.onpolicy): this rank's draw and sampling stream
        self.sampling = torch.Generator().manual_seed(int(self.args.seed) * 1009 + self.args.process_index)
        self._sampled_text: list[str] = []

    # -- teacher under DeepSpeed ------------------------------------------------------------
    def _prepare_teacher(self) -> None:
        """Under DeepSpeed the frozen teacher becomes an inference engine: sharded with ZeRO-3
        (no full copy per GPU), replicated otherwise (ZeRO-1/2 only shard optimizer state and
        gradients, which a frozen model has none of)."""
        if self._teacher_ready:
            return
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        if self.share_vision and self.teacher is not None and self.loss_config.needs_teacher:
            self.vision.install(self.model, self.teacher, zero3=zero3)
        elif self.teacher is not None:
            self.vision.decision = "separate: train.share_vision_tower is off"
        if self.teacher is not None and self.is_deepspeed_enabled:
            self.teacher = shard_teacher(self.teacher, self.accelerator.state.deepspeed_plugin.deepspeed_config)
        if self.teacher is not None:
            print(f"vision tower: {self.vision.decision}", flush=True)
        self._teacher_ready = True

    # -- batches ----------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped batches per optimizer step (llavakd.data.sampler), or transformers' default."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_modality_length or not hasattr(dataset, "modality_lengths"):
            return super()._get_train_sampler(train_dataset)
        from llavakd.data.sampler import ModalityLengthGroupedSampler

        group = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return ModalityLengthGroupedSampler(dataset.modality_lengths(), group, seed)

    @property
    def tokens_seen(self) -> int:
        """Attended tokens of the student's micro-batches so far (this rank); reading waits for the device."""
        return int(self._attended)

    @property
    def padding_fraction(self) -> float:
        """Padded share of the positions of every micro-batch so far (this rank)."""
        return 1.0 - self.tokens_seen / self.positions_seen if self.positions_seen else 0.0

    # -- loss ------------------------------------------------------------------------------
    @property
    def loss_implementation(self) -> str:
        """The objective this run computes: fused, chunked or naive (fused falls back under ZeRO-3)."""
        if self._implementation is None:
            wanted = self.loss_config.implementation
            zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
            self._implementation = "chunked" if (wanted == "fused" and zero3) else wanted
            if self._implementation != wanted:
                print("loss.implementation fused: the LM heads are partitioned under ZeRO-3; "
                      "this run computes the chunked objective from full logits", flush=True)
        return self._implementation

    def _get_num_items_in_batch(self, batch_samples: list, device) -> dict[str, torch.Tensor]:
        """What each enabled term averages over in the whole optimizer step, by term name, summed
        over its micro-batches and the ranks (float64; llavakd.terms.base.Count): compute_loss
        divides by them. With on-policy distillation the step's drawn micro-batches are rewritten
        with the student's samples first (in place), so the teacher terms count the sampled tokens
        and CE the dataset's answers."""
        if self.loss_config.on_policy > 0:
            self._draw_on_policy(batch_samples)
        names = self.loss_config.enabled()
        counts = torch.zeros(len(names), dtype=torch.float64, device=device)
        for batch in batch_samples:
            ce = batch.get("ce_batch")
            local = step_counts(self.loss_config, batch["labels"], batch["visual_mask"], ce["labels"] if ce else None,
                                batch.get("attention_mask"))
            counts += torch.tensor([local[n] for n in names], dtype=torch.float64, device=device)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return dict(zip(names, counts.unbind()))

    def _draw_on_policy(self, batch_samples: list) -> None:
        """Each micro-batch of the step: on-policy with probability ``loss.on_policy`` (this rank's
        stream), then its last answers sampled by the student (llavakd.train.onpolicy)."""
        from llavakd.model.chat import IMAGE_TOKEN, end_id
        from llavakd.train.onpolicy import rewrite

        cfg, tok = self.loss_config, self.tokenizer
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise LlavaKDError("loss.on_policy under ZeRO-3: the student samples with its full weights, which "
                               "ZeRO-3 partitions; use ZeRO-2")
        if tok is None:
            raise LlavaKDError("loss.on_policy: the trainer needs the tokenizer (setup_trainer passes it)")
        student = self.accelerator.unwrap_model(self.model)
        with_dataset_terms = bool(set(cfg.enabled()) & set(terms.dataset_terms()))  # CE: keep the original answers
        for batch in batch_samples:
            if float(torch.rand(1, generator=self.sampling)) >= cfg.on_policy:
                continue
            was_training = student.training
            student.eval()
            try:
                new, samples = rewrite(
                    batch, student, temperature=cfg.sample_temperature, max_new_tokens=cfg.max_new_tokens,
                    stop_id=end_id(tok), pad_id=tok.pad_token_id,
                    image_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), generator=self.sampling,
                    max_positions=student.config.text_config.max_position_embeddings, keep_original=with_dataset_terms)
            finally:
                student.train(was_training)
                self._student_taps.take()
            batch.clear()
            batch.update(new)
            self._sampled_text = [tok.decode(s) for s in samples if s][:2]

    def sampling_state_file(self, checkpoint) -> Path:
        from llavakd.train.onpolicy import SAMPLING_STATE

        return Path(checkpoint) / SAMPLING_STATE.format(rank=self.args.process_index)

    def load_sampling_state(self, checkpoint) -> None:
        """Restore this rank's sampling stream from a checkpoint (on-policy runs)."""
        if self.loss_config.on_policy <= 0:
            return
        path = self.sampling_state_file(checkpoint)
        if not path.is_file():
            print(f"{checkpoint}: no sampling state ({path.name}); the student's samples restart from the seed",
                  flush=True)
            return
        self.sampling.set_state(torch.load(path, weights_only=True))

    def _step_shares(self, labels, visual_mask, step_counts_: dict[str, torch.Tensor] | None,
                     dataset_labels: torch.Tensor | None = None, attention_mask=None) -> dict[str, float]:
        """Each term's share of the step's positions in this micro-batch (times the ranks, which DDP
        and DeepSpeed average over): the objective multiplies the configured weights by it (they are
        never rewritten), so the local means it computes sum to the step's means. (L_rel with
        rel_reduction batch is a cosine over the micro-batch's Gram matrices, weighted by its image
        samples: it cannot be split exactly.)"""
        if step_counts_ is None:
            return {n: 1.0 for n in self.loss_config.enabled()}
        local = step_counts(self.loss_config, labels, visual_mask, dataset_labels, attention_mask)
        totals = torch.stack([step_counts_[n] for n in local]).tolist()
        world = self.accelerator.num_processes
        return {n: world * lo / to if to > 0 else 0.0 for (n, lo), to in zip(local.items(), totals)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._prepare_teacher()
        self.vision.begin()
        visual_mask = inputs.pop("visual_mask")
        inputs.pop("sample_ids", None)
        labels = inputs.pop("labels")
        ce_batch = inputs.pop("ce_batch", None)  # on-policy with CE: the dataset's answers, for CE
        cfg = self.loss_config  # validated once, when the job read its config
        if ce_batch is not None:
            cfg = cfg.without(terms.dataset_terms())  # this forward: the teacher terms on the samples
        shares = self._step_shares(labels, visual_mask,
                                   num_items_in_batch if isinstance(num_items_in_batch, dict) else None,
                                   ce_batch["labels"] if ce_batch is not None else None, inputs.get("attention_mask"))
        fwd = {k: v for k, v in inputs.items() if v is not None}
        fused = self.loss_implementation == "fused"
        keep = {"logits_to_keep": 1} if fused else {}  # fused: the heads are applied chunk by chunk
        keep["use_cache"] = False  # a training forward reads no KV cache: none is built (the teacher's is GiBs)
        out = model(**fwd, **keep)
        h_s, f_s = self._student_taps.take()
        t_logits = h_t = f_t = None
        with_teacher = self.teacher is not None and cfg.needs_teacher
        if with_teacher:
            with torch.no_grad():
                t_out = self.teacher(**fwd, **keep)
            h_t, f_t = self._teacher_taps.take()
            t_logits = None if fused else t_out.logits
        needs = cfg.needs()
        extra = {"attention_mask": fwd.get("attention_mask"), "parts": parts_of(model)}
        if "features" in needs:
            extra.update(student_features=f_s, teacher_features=f_t)
        if "attention" in needs and self._attention_taps is not None:
            s_taps, t_taps = self._attention_taps
            with torch.no_grad():
                t_qk = t_taps.take()
            extra.update(student_attention=s_taps.take(), teacher_attention=t_qk)
        if fused:
            res = fused_distill_loss(h_s, lm_head_weight(self.accelerator.unwrap_model(model)), h_t,
                                     lm_head_weight(self.teacher) if with_teacher else None, labels, visual_mask,
                                     cfg, **extra, scale=shares, checked=True, step=self.state.global_step)
        else:
            if "hidden" in needs:
                extra.update(student_hidden=h_s, teacher_hidden=h_t)
            res = distill_loss(out.logits, t_logits, labels, visual_mask, cfg, **extra, scale=shares, checked=True)
        if ce_batch is not None:
            res = self._with_dataset_ce(model, res, ce_batch, shares, keep)
        self._note_loss(res, shares)
        mask = fwd["attention_mask"]
        self._attended = self._attended + mask.sum().detach().to(torch.float64)  # read at logging steps only
        self.positions_seen += mask.numel()
        return (res.total, out) if return_outputs else res.total

    def _with_dataset_ce(self, model, res, batch, shares, keep):
        """On-policy with CE: CE on the micro-batch's original answers (a student forward of its
        own), added to the teacher terms on the student's samples."""
        cfg = self.loss_config.only(terms.dataset_terms())
        fwd = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values") if batch.get(k) is not None}
        out = model(**fwd, **keep)
        h_s, _ = self._student_taps.take()
        if self.loss_implementation == "fused":
            ce = fused_distill_loss(h_s, lm_head_weight(self.accelerator.unwrap_model(model)), None, None,
                                    batch["labels"], batch["visual_mask"], cfg, scale=shares, checked=True,
                                    step=self.state.global_step)
        else:
            ce = distill_loss(out.logits, None, batch["labels"], batch["visual_mask"], cfg, scale=shares, checked=True)
        res.total = res.total + ce.total
        res.part_tensors = {**ce.part_tensors, **res.part_tensors}
        return res

    def _note_loss(self, res, shares) -> None:
        """Add a micro-batch's parts to the logging sums and its finiteness to the step's, on the device."""
        keys = list(res.part_tensors)
        for k in keys:  # the step's means, as the loss
            v = res.part_tensors[k].detach().to(torch.float64)
            self._parts_sum[k] = self._parts_sum.get(k, 0.0) + v * shares[k]
        finite = torch.stack([torch.isfinite(res.total.detach()).all(),
                              *(torch.isfinite(res.part_tensors[k]).all() for k in keys)])
        if self._step_finite is None or self._step_keys != keys:
            self._step_finite, self._step_keys = finite, keys
        else:
            self._step_finite = self._step_finite & finite
        self._parts_n += 1.0 / max(getattr(self, "current_gradient_accumulation_steps", 1), 1)

    def take_loss_flags(self) -> tuple[list[str], torch.Tensor | None]:
        """(["total", *parts], device bools: finite in every micro-batch of this step) and forget them;
        the finiteness guard reads them with the gradients' check, one wait a step."""
        flags, keys = self._step_finite, ["total", *self._step_keys]
        self._step_finite = None
        return keys, flags

    def non_finite_loss_message(self, step: int, keys: list[str], finite: list[bool]) -> str | None:
        """The guard's line when a loss of this step was NaN/inf, else None."""
        bad = [k for k, ok in zip(keys, finite) if not ok]
        if not bad:
            return None
        parts = ", ".join(f"{k}={float(v) / max(self._parts_n, 1e-12):.4g}" for k, v in self._parts_sum.items())
        return (f"step {step}: non-finite loss in {', '.join(k for k in bad if k != 'total') or 'total'} ({parts}); "
                "stopped before the optimizer step")

    def log(self, logs: dict, start_time=None) -> None:
        if "loss" in logs and self._parts_n:
            keys = sorted(self._parts_sum)
            means = torch.stack([torch.as_tensor(self._parts_sum[k], dtype=torch.float64) for k in keys]) / self._parts_n
            if self.accelerator.num_processes > 1:  # every rank logs: average the parts like the loss
                means = self.accelerator.reduce(means.to(self.args.device), reduction="mean")
            for k, v in zip(keys, means.cpu().tolist()):  # the wait for the device, at logging steps only
                logs[f"loss_{k}"] = float(f"{v:.10g}")
            self._parts_sum, self._parts_n = {}, 0
            elapsed = time.perf_counter() - self._t_start
            attended = float(self._attended)
            logs["tokens_per_s"] = round(attended / max(elapsed, 1e-9), 1)
            positions = self.positions_seen - self._at_log[1]
            if positions:  # padded share of the positions since the last log
                logs["padding_fraction"] = round(1.0 - (attended - self._at_log[0]) / positions, 4)
            self._at_log = [attended, self.positions_seen]
            if self._sampled_text:  # on-policy: what the student answered in the latest drawn micro-batch
                logs["sampled"] = self._sampled_text
                self._sampled_text = []
        super().log(logs, start_time) if start_time is not None else super().log(logs)

    # -- resume ------------------------------------------------------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Load checkpoint weights through from_pretrained's key conversion, strictly.

        save_pretrained writes Llava weights under their legacy names; the stock Trainer loads
        the raw file and only warns about the resulting missing keys, which would resume from
        the wrong weights. Under DeepSpeed the engine restores its own shards instead.
        """
        if self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_weights_strictly(model or self.model, resume_from_checkpoint)

    def finish_from_checkpoint(self, checkpoint: Path) -> None:
        """Take a checkpoint of the run's last step as the trained state, without training.

        A job killed after its last checkpoint but before final/ was written resumes here:
        transformers' resume would run one step more than max_steps. The checkpoint's weights
        (consolidated ones under ZeRO-3, whose config gathers them on save) and its trainer state
        are loaded into the plain model; ``save_final`` then writes them."""
        from transformers import TrainerState

        load_weights_strictly(self.model, checkpoint, with_parts=False)  # the exported student needs no parts
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))

    # -- optimizer --------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        """transformers' optimizer; with ``loss.parts_lr`` the objective's learnable parts get groups
        of their own at that learning rate (the schedule scales them as the student's)."""
        optimizer = super().create_optimizer(model)
        lr = self.loss_config.parts_lr
        parts = parts_of(self.model)
        if lr is None or parts is None:
            return optimizer
        ids = {id(p) for p in parts.parameters()}
        for group in list(optimizer.param_groups):
            own = [p for p in group["params"] if id(p) in ids]
            if own:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
                optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": own,
                                           "lr": lr})
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        return optimizer

    # -- saving ----------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save the student without the objective's learnable parts, so every saved model (final/
        above all) is a plain LLaVA that ``from_pretrained`` loads with no unexpected keys; a
        checkpoint keeps the parts beside its weights (``LOSS_PARTS``; under DeepSpeed the engine's
        own checkpoint holds them). A head the config ties must still be the embeddings' tensor: an
        untied copy would be written as a second head and lost again on load (llavakd.model.build.check_tied)."""
        from llavakd.model.build import check_tied

        check_tied(self.accelerator.unwrap_model(self.model), f"the student saved to {output_dir or self.args.output_dir}")
        parts = parts_of(self.model)
        if parts is None:
            return super()._save(output_dir, state_dict)
        if state_dict is None:
            state_dict = self.model.state_dict()
        super()._save(output_dir, {k: v for k, v in state_dict.items() if not is_part_key(k)})
        if self._staging is not None and self.args.should_save and not self.is_deepspeed_enabled:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous() for k, v in parts.state_dict().items()},
                      str(Path(output_dir or self.args.output_dir) / LOSS_PARTS))

    # -- atomic checkpoints ----------------------------------------------------------------
    def _get_output_dir(self, trial):
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Stage, rename, then (main process) mark it complete in the background: hashing every file
        of a large checkpoint takes seconds to minutes, and training goes on meanwhile. The marker is
        written last, and older checkpoints are removed only after it, so a job killed while hashing
        resumes from the checkpoint before (this one is not complete yet). The next checkpoint and
        the end of the run wait for the writer (``wait_for_checkpoints``)."""
        self.wait_for_checkpoints()
        final_root = Path(self.args.output_dir)
        name = checkpoint_name(self.state.global_step)
        staging = final_root / f".staging-{name}"
        if self.args.should_save and staging.exists():
            shutil.rmtree(staging)
        self._staging = str(staging)
        try:
            try:
                super()._save_checkpoint(model, trial)
                if self.loss_config.on_policy > 0:  # this rank's sampling stream (llavakd.train.onpolicy)
                    torch.save(self.sampling.get_state(), self.sampling_state_file(staging / name))
            finally:
                self._staging = None
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                target = final_root / name
                if target.exists():
                    shutil.rmtree(target)
                os.replace(staging / name, target)  # rename: the folder appears complete or not at all
                shutil.rmtree(staging, ignore_errors=True)
                self._marker_thread = threading.Thread(target=self._mark, args=(final_root, name),
                                                       name=f"llavakd-marker-{name}")
                self._marker_thread.start()
        except OSError as err:  # disk full, quota, I/O error: keep what is intact, say so, stop
            shutil.rmtree(staging, ignore_errors=True)
            raise self._write_error(final_root, name, err) from err
        self.accelerator.wait_for_everyone()

    def _mark(self, final_root: Path, name: str) -> None:
        """The background writer: sizes and sha256 of every file, the marker last, then pruning."""
        try:
            write_marker(final_root / name)
            for old in complete_checkpoints(final_root)[:-self.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as err:
            self._marker_error = (final_root, name, err)

    def wait_for_checkpoints(self) -> None:
        """Wait for the background marker writer; raise CheckpointWriteError if it failed."""
        thread, self._marker_thread = getattr(self, "_marker_thread", None), None
        if thread is not None:
            thread.join()
        failed, self._marker_error = getattr(self, "_marker_error", None), None
        if failed is not None:
            raise self._write_error(*failed) from failed[2]

    @staticmethod
    def _write_error(final_root: Path, name: str, err: OSError) -> CheckpointWriteError:
        if (final_root / name).exists() and not (final_root / name / COMPLETE_MARKER).exists():
            shutil.rmtree(final_root / name, ignore_errors=True)
        earlier = complete_checkpoints(final_root)
        kept = f"{earlier[-1].name} is intact" if earlier else "there is no earlier checkpoint"
        return CheckpointWriteError(
            f"{final_root / name}: could not write the checkpoint ({err.strerror or err}); {kept}; "
            "free space and rerun with --resume")


def step_counts(cfg, labels: torch.Tensor, visual_mask: torch.Tensor, dataset_labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> dict[str, float]:
    """What each enabled term of ``cfg`` averages over in a batch (llavakd.terms.base.Count), by name;
    terms that read the dataset's answers count them in ``dataset_labels`` when given (on-policy)."""
    from llavakd.terms.base import positions

    out = {}
    for name in cfg.enabled():
        spec = terms.spec(name)
        ys = dataset_labels if dataset_labels is not None and not spec.teacher else labels
        kind = spec.count_for(cfg)
        if spec.counter is not None:
            out[name] = float(spec.counter(cfg, ys, visual_mask, attention_mask))
        elif kind == "images":
            out[name] = float(visual_mask.any(-1).sum())
        else:
            out[name] = float(positions(kind, ys, visual_mask, attention_mask).sum())
    return out


def lm_head_weight(model) -> torch.Tensor:
    """The LM head's weight of a LLaVA, a wrapped one (DeepSpeed engine) included."""
    return getattr(model, "module", model).lm_head.weight


class LLMTaps:
    """What an LLaVA's LLM received and gave in its latest forward: the input embeddings (projected
    visual features at the visual positions) and the last hidden state (after the final norm, what
    the LM head reads), by hooks inside the forward (so DDP and DeepSpeed see a plain forward)."""

    def __init__(self, model):
        inner = getattr(getattr(model, "module", model), "model", model)
        llm = inner.language_model
        self.hidden = self.embeds = None
        llm.register_forward_pre_hook(self._inputs, with_kwargs=True)
        llm.register_forward_hook(self._outputs)

    def _inputs(self, module, args, kwargs):
        self.embeds = kwargs.get("inputs_embeds")

    def _outputs(self, module, args, output):
        self.hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def take(self):
        """(last hidden state, input embeddings) of the latest forward; forgets them."""
        out, self.hidden, self.embeds = (self.hidden, self.embeds), None, None
        return out


def tie_projector(model):
    """Make the projector take part in every training forward, images or not.

    A batch of text-only samples (length grouping makes them common) never calls the projector.
    A plain process and DDP then give it no gradient and AdamW skips it, while DeepSpeed steps it
    (ZeRO-2 as with a zero gradient; under ZeRO-3 even the step's gradient norm differs), and the
    runs part ways after the first text-only step (tests/test_train_distributed.py). A hook inside
    the forward adds 0 x the projector's output on a zero input to the LLM's input embeddings
    (values unchanged, exactly): the projector then gets a zero gradient in every engine and AdamW
    moves it by its momentum, as upstream's DeepSpeed runs do. Returns the hook's handle, or None
    for a model without a projector."""
    inner = getattr(model, "model", model)
    projector = getattr(inner, "multi_modal_projector", None)
    llm = getattr(inner, "language_model", None)
    if projector is None or llm is None:
        return None
    width = next(m.in_features for m in projector.modules() if isinstance(m, torch.nn.Linear))

    def add_zero_projection(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or not torch.is_grad_enabled() or not any(p.requires_grad for p in projector.parameters()):
            return None
        zero = 0.0 * projector(embeds.new_zeros(1, 1, width)).sum()
        return args, {**kwargs, "inputs_embeds": embeds + zero.to(embeds.dtype)}

    return llm.register_forward_pre_hook(add_zero_projection, with_kwargs=True)


def load_weights_strictly(target, folder, with_parts: bool = True) -> None:
    """Load a saved checkpoint's weights into ``target`` through from_pretrained's key conversion;
    refuse (naming the keys) when they do not match, instead of warning and going on. The
    objective's learnable parts, when the target holds them and ``with_parts``, come from the
    checkpoint's ``LOSS_PARTS`` file, as strictly (a run that only writes final/ from its last
    checkpoint needs none; under DeepSpeed the engine's own checkpoint holds them)."""
    loaded = type(target).from_pretrained(folder, dtype=next(target.parameters()).dtype)
    result = target.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if target.config.tie_word_embeddings else set()
    missing = [k for k in result.missing_keys if k not in tied and not is_part_key(k)]
    if missing or result.unexpected_keys:
        raise LlavaKDError(
            f"{folder}: checkpoint does not match the model (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    parts = parts_of(target) if with_parts else None
    if parts is not None:
        path = Path(folder) / LOSS_PARTS
        if not path.is_file():
            raise LlavaKDError(f"{folder}: no {LOSS_PARTS}; the objective's learnable parts cannot be restored")
        from safetensors.torch import load_file

        saved = load_file(str(path), device=str(next(parts.parameters()).device))
        try:
            parts.load_state_dict(saved, strict=True)
        except RuntimeError as err:
            raise LlavaKDError(f"{path}: does not match the objective's learnable parts ({err})") from err


def last_step_reached(checkpoint: Path) -> bool:
    """Whether a checkpoint holds the run's last optimizer step (its trainer state says so)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def shard_teacher(teacher, ds_config: dict):
    """Wrap a frozen teacher in a DeepSpeed inference engine built from the student's config."""
    import copy

    import deepspeed

    cfg = copy.deepcopy(ds_config)
    for key in ("optimizer", "scheduler"):
        cfg.pop(key, None)
    zero = cfg.get("zero_optimization", {})
    if zero.get("stage", 0) == 3:
        h = teacher.config.text_config.hidden_size
        fill = {"reduce_bucket_size": h * h, "stage3_param_persistence_threshold": 10 * h,
                "stage3_prefetch_bucket_size": int(0.9 * h * h)}
        for k, v in fill.items():
            if zero.get(k, "auto") == "auto":
                zero[k] = v
        cfg["zero_optimization"] = zero
    else:
        cfg["zero_optimization"] = {"stage": 0}
    for k in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
              "gradient_clipping"):
        if cfg.get(k) == "auto":
            cfg.pop(k)
    engine, *_ = deepspeed.initialize(model=teacher, config=cfg)
    engine.eval()
    return engine


class NonFiniteGradGuard(TrainerCallback):
    """Stop the run when a gradient is NaN/inf, before that step changes the weights.

    Plain and DDP runs: the gradients sit on the parameters; one device-side check over all of them
    and over the step's losses (the trainer's ``take_loss_flags``; a single host sync a step) before
    the optimizer step, and only on failure a pass that names the parameter or the loss term.
    DeepSpeed keeps gradients in its own partitioned buffers and steps inside
    ``backward``, before any callback; its ZeRO optimizers compute the global gradient norm and skip
    an update whose norm is not finite (``engine.was_step_applied()``), so the guard reads that
    after the step and stops with the weights unchanged. Under fp16 a skipped step is the loss
    scaler's normal calibration, so it is left to DeepSpeed there."""

    def __init__(self, model, trainer=None):
        self.model = model
        self.trainer = trainer  # set by setup_trainer: the DeepSpeed engine is known only once training starts

    def _engine(self):
        engine = getattr(self.trainer, "model_wrapped", None) if self.trainer is not None else None
        return engine if engine is not None and hasattr(engine, "was_step_applied") else None

    def _loss_flags(self):
        take = getattr(self.trainer, "take_loss_flags", None)
        return take() if take is not None else ([], None)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._engine() is not None:
            return
        keys, loss_ok = self._loss_flags()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        checks = [torch.stack([torch.isfinite(g).all() for g in grads]).all()] if grads else []
        if loss_ok is not None:
            checks.append(loss_ok.to(checks[0].device) if checks else loss_ok)
        if not checks:
            return
        flags = torch.cat([c.reshape(-1) for c in checks]).tolist()  # the one wait for the device a step
        if loss_ok is not None:
            line = self.trainer.non_finite_loss_message(state.global_step + 1, keys, flags[-len(keys):])
            if line:
                raise NonFiniteError(line)
        if not grads or flags[0]:
            return
        name = next(n for n, p in self.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all())
        raise NonFiniteError(f"step {state.global_step + 1}: non-finite gradient in {name}; "
                             "stopped before the optimizer step")

    def on_optimizer_step(self, args, state, control, **kwargs):
        engine = self._engine()
        if engine is None:
            return
        keys, loss_ok = self._loss_flags()
        if engine.fp16_enabled() or engine.was_step_applied():
            return
        if loss_ok is not None:
            line = self.trainer.non_finite_loss_message(state.global_step + 1, keys, loss_ok.tolist())
            if line:
                raise NonFiniteError(line.replace("stopped before the optimizer step",
                                                  "DeepSpeed skipped the update, so the weights are unchanged; stopped"))
        zero = engine.zero_optimization_stage()
        raise NonFiniteError(f"step {state.global_step + 1}: non-finite gradient norm under DeepSpeed ZeRO-{zero}; "
                             "DeepSpeed skipped the update, so the weights are unchanged; stopped")


class JsonlLogger(TrainerCallback):
    """Every log event as one JSON line (step, lr, grad norm, CE, L_res, L_vis, L_rel, ...)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            rec = {"step": state.global_step, "epoch": state.epoch, **logs}
            with self.path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")


class StopAfter(TrainerCallback):
    """Stop right after the first checkpoint at or after step N (``train.stop_after_steps``).

    A test hook, kept in the production trainer on purpose: the resume and damaged-checkpoint tests
    need a run that ends after a checkpoint and before ``final/``, as a killed job does, and this
    gives it in-process and deterministically (the SIGKILL tests cover a real kill). Nothing a study
    plans sets it; the run then writes no ``final/`` (llavakd.train.run)."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


class StopOnSignal(TrainerCallback):
    """Checkpoint and stop at the end of the optimizer step in flight when a stop signal has come
    (llavakd.preempt: the scheduler's warning, SIGUSR1 or SIGTERM). Ranks agree first: a signal may
    reach one rank a step before another, and every rank must save the same step (under DeepSpeed each
    saves its shard, rank 0 the marker). One scalar all-reduce a step, only with several ranks."""

    def __init__(self, request):
        self.request = request
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.request.requested
        if args.world_size > 1:
            import torch.distributed as dist

            flag = torch.tensor([1.0 if stop else 0.0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop and self.stopped_at is None:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
