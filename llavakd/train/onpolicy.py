"""On-policy distillation: the student answers some micro-batches itself, and the loss is taken on that.

GKD (Agarwal et al., ICLR 2024) distils on the student's own samples for a fraction lambda of the
micro-batches (``loss.on_policy``). Here, at the start of each optimizer step, every micro-batch of
the step is drawn on-policy with probability lambda; for each record of a drawn micro-batch the
student (eval mode, no gradients, its current weights) samples a new *last* assistant answer after
the record's prompt (earlier turns and the image stay as data) at ``loss.sample_temperature``, up to
``loss.max_new_tokens`` tokens or the end token. The record becomes prompt + sample, and only the
sampled tokens are supervised: teacher and student score them under teacher forcing in the step's
forward, the divergence is taken on them, and the step's mean runs over every supervised token of
the step, sampled ones included (the trainer counts them before any forward). CE, when the method
keeps it, stays on the dataset's answers: the micro-batch as it was goes along and the student reads
it in a forward of its own, CE averaged over the step's dataset answers.

The draw and the sampling read one ``torch.Generator`` per rank, seeded from the run's seed and the
rank; its state is saved in every checkpoint (``SAMPLING_STATE``) and restored on resume, so a
resumed run samples what the uninterrupted one did.

Why not ``model.generate``: it samples from the global RNG (whose state the Trainer also restores,
but which dropout and other code share) and applies the checkpoint's generation_config (top-k,
top-p, repetition penalty) unless each is overridden; GKD's samples are plain draws from the
student's softmax at one temperature, and the stream has to be this run's own. The loop below is
that and nothing more: a KV-cached forward per token.
"""

from __future__ import annotations

import torch

from llavakd.labels import IGNORE_INDEX

SAMPLING_STATE = "llavakd_sampling_rng_{rank}.pt"  # in each checkpoint folder, one per rank


def last_answer(labels: torch.Tensor) -> tuple[int, int] | None:
    """[start, end) of the last contiguous run of supervised positions in one record, or None."""
    supervised = (labels != IGNORE_INDEX).tolist()
    if not any(supervised):
        return None
    end = len(supervised) - supervised[::-1].index(True)
    start = end - 1
    while start > 0 and supervised[start - 1]:
        start -= 1
    return start, end


@torch.no_grad()
def sample_answer(model, prompt: torch.Tensor, pixel_values: torch.Tensor | None, *, temperature: float,
                  max_new_tokens: int, stop_id: int, generator: torch.Generator) -> list[int]:
    """Tokens drawn from the student's softmax at ``temperature`` after ``prompt`` [P], one at a
    time with the KV cache, until ``stop_id`` (kept) or ``max_new_tokens``."""
    ids = prompt[None]
    extra = {"pixel_values": pixel_values[None]} if pixel_values is not None else {}
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **extra)
    tokens: list[int] = []
    for _ in range(max_new_tokens):
        logits = out.logits[0, -1].float() / temperature
        probs = torch.softmax(logits, -1).cpu()
        tok = int(torch.multinomial(probs, 1, generator=generator))
        tokens.append(tok)
        if tok == stop_id:
            break
        nxt = torch.tensor([[tok]], device=prompt.device)
        length = ids.shape[1] + len(tokens)
        out = model(input_ids=nxt, attention_mask=torch.ones(1, length, dtype=torch.long, device=prompt.device),
                    past_key_values=out.past_key_values, use_cache=True)
    return tokens


def rewrite(batch: dict, model, *, temperature: float, max_new_tokens: int, stop_id: int, pad_id: int,
            image_id: int, generator: torch.Generator, max_positions: int,
            keep_original: bool = False) -> tuple[dict, list[list[int]]]:
    """The micro-batch with each record's last answer replaced by the student's sample (see the
    module docstring), right-padded; and the sampled tokens per record. A record without a
    supervised answer stays as it is. ``keep_original``: the batch as it was goes along under
    ``ce_batch`` (CE on the dataset's answers, beside the divergence on the samples)."""
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    pixels = batch.get("pixel_values")
    has_image = (ids == image_id).any(-1).tolist()
    rows, samples, p = [], [], 0
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        span = last_answer(labels[b, :n])
        pix = None
        if has_image[b] and pixels is not None:
            pix, p = pixels[p], p + 1
        if span is None:
            rows.append((ids[b, :n], labels[b, :n]))
            samples.append([])
            continue
        prompt = ids[b, :span[0]]
        budget = max(1, min(max_new_tokens, max_positions - prompt.numel()))
        tokens = sample_answer(model, prompt, pix, temperature=temperature, max_new_tokens=budget, stop_id=stop_id,
                               generator=generator)
        new = torch.tensor(tokens, dtype=ids.dtype, device=ids.device)
        rows.append((torch.cat([prompt, new]),
                     torch.cat([torch.full_like(prompt, IGNORE_INDEX), new])))
        samples.append(tokens)
    L = max(r[0].numel() for r in rows)
    B = len(rows)
    out = dict(batch)
    out["input_ids"] = torch.full((B, L), pad_id, dtype=ids.dtype, device=ids.device)
    out["labels"] = torch.full((B, L), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
    out["attention_mask"] = torch.zeros((B, L), dtype=mask.dtype, device=mask.device)
    for b, (row_ids, row_labels) in enumerate(rows):
        out["input_ids"][b, :row_ids.numel()] = row_ids
        out["labels"][b, :row_labels.numel()] = row_labels
        out["attention_mask"][b, :row_ids.numel()] = 1
    out["visual_mask"] = (out["input_ids"] == image_id) & out["attention_mask"].bool()
    if keep_original:
        out["ce_batch"] = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values", "visual_mask")
                           if k in batch}
    return out, samples
