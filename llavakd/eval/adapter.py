"""lmms-eval model class for llavakd checkpoints (any HF LlavaForConditionalGeneration folder).

    python -m lmms_eval --model llavakd --model_args pretrained=results/.../final --tasks mme
    # registered through the `lmms_eval.models` entry point (pyproject.toml), so the stock
    # lmms-eval command line finds it once llavakd is installed

Prompts use the training template (``llavakd.model.chat``): the system prompt, " USER: ",
"<image>\\n" for each image, the task's text, " ASSISTANT:". Decoding is greedy. Requests are
grouped by prompt length so a batch never needs padding: an answer is the same at any batch
size. ``loglikelihood`` scores the continuation as the assistant's answer.

Decoding follows the task and nothing else: its ``max_new_tokens`` (``DEFAULT_NEW_TOKENS``, the default
of lmms-eval's own LLaVA models, when a task names none) and its ``until`` strings (lmms-eval adds a
blank line to a task that names none; the paper protocol's variants name none and stop at the end
token only). There is no cap of our own: a limit that exists is written in the task's YAML.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from llavakd.model.chat import encode_prompt, end_id

DEFAULT_NEW_TOKENS = 1024  # lmms-eval's LLaVA models' limit for a task that names none (models/simple/llava_hf.py)


def stops_and_limit(gen_kwargs: dict | None) -> tuple[list[str], int]:
    """A task's stop strings and its new-token limit, from its generation kwargs, as they are."""
    gen_kwargs = dict(gen_kwargs or {})
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    return until, int(gen_kwargs.get("max_new_tokens", DEFAULT_NEW_TOKENS))


def cut_at_stops(text: str, until: list[str]) -> str:
    """An answer as lmms-eval's tasks want it: cut at the first stop string, stripped."""
    for s in until:
        if s and s in text:
            text = text.split(s, 1)[0]
    return text.strip()


@torch.no_grad()
def generate_grouped(model, processor, encodings: list[dict], limits: list[int], batch_size: int,
                     progress: bool = False) -> list[str]:
    """Greedy answers for encoded prompts, batched only among prompts of equal length and token
    limit: no batch needs padding, so an answer does not depend on the batch size."""
    eos = end_id(processor)
    groups = defaultdict(list)
    for i, e in enumerate(encodings):
        groups[(e["input_ids"].shape[1], limits[i], "pixel_values" in e)].append(i)
    answers = [""] * len(encodings)
    bar = tqdm(total=len(encodings), desc="llavakd generate", disable=not progress)
    for (_, limit, _), idx in sorted(groups.items()):
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            batch = {k: torch.cat([encodings[i][k] for i in chunk]).to(model.device) for k in encodings[chunk[0]]}
            out = model.generate(**batch, max_new_tokens=limit, do_sample=False, eos_token_id=eos, pad_token_id=eos)
            for i, row in zip(chunk, out[:, batch["input_ids"].shape[1]:]):
                answers[i] = processor.tokenizer.decode(row, skip_special_tokens=True)
            bar.update(len(chunk))
    bar.close()
    return answers


class LlavaKD(lmms):
    is_simple = True

    def __init__(self, pretrained: str, batch_size: int | str = 1, device: str = "auto",
                 dtype: str = "float32", **kwargs) -> None:
        super().__init__()
        from transformers import LlavaForConditionalGeneration

        from llavakd.model.build import load_processor

        if kwargs:
            raise ValueError(f"llavakd model: unknown model_args {sorted(kwargs)}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = LlavaForConditionalGeneration.from_pretrained(
            pretrained, dtype=getattr(torch, dtype), local_files_only=True).to(self.device).eval()
        self.processor = load_processor(pretrained, local_files_only=True)
        self.batch_size = int(batch_size)
        self.eos_id = end_id(self.processor)

    # -- helpers -------------------------------------------------------------------------
    def _encode(self, context: str, visuals: list):
        images = [v.convert("RGB") for v in visuals] or None
        return encode_prompt(self.processor, context, images)

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        doc = self.task_dict[task][split][doc_id]
        return [v for v in (doc_to_visual(doc) or []) if v is not None]

    @staticmethod
    def _stop(text: str, until: list[str]) -> str:
        return cut_at_stops(text, until)

    # -- lmms-eval API ---------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        enc, opts = [], []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            enc.append(self._encode(context, self._visuals(doc_to_visual, doc_id, task, split)))
            until, limit = stops_and_limit(gen_kwargs)
            opts.append((tuple(until), limit))
        texts = generate_grouped(self.model, self.processor, enc, [o[1] for o in opts], self.batch_size,
                                 progress=self._rank == 0)
        return [self._stop(t, list(o[0])) for t, o in zip(texts, opts)]

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results = []
        for req in tqdm(requests, desc="llavakd loglikelihood", disable=self._rank != 0):
            context, continuation, doc_to_visual, doc_id, task, split = req.args
            prompt = self._encode(context, self._visuals(doc_to_visual, doc_id, task, split))
            cont = self.processor.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids = torch.cat([prompt["input_ids"], cont], 1).to(self.device)
            inputs = {k: v.to(self.device) for k, v in prompt.items() if k not in ("input_ids", "attention_mask")}
            logits = self.model(input_ids=ids, **inputs).logits[0, prompt["input_ids"].shape[1] - 1:-1].float()
            logp = torch.log_softmax(logits, -1)
            target = cont[0].to(self.device)
            results.append((float(logp.gather(1, target[:, None]).sum()), bool((logits.argmax(-1) == target).all())))
        return results

    def clean(self) -> None:
        """lmms-eval calls this at the end of every ``simple_evaluate`` and, by default, deletes the
        model's modules. Our runner evaluates one loaded model on benchmark after benchmark, so the
        weights stay; only cached GPU memory is released."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("llavakd: multi-round generation is not used by the paper's benchmarks")


def manifest():
    """Entry-point payload for lmms-eval's model registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="llavakd", simple_class_path="llavakd.eval.adapter.LlavaKD")
