"""lmms-eval model class for llavakd checkpoints (any HF LlavaForConditionalGeneration folder).

    python -m lmms_eval --model llavakd --model_args pretrained=results/.../final --tasks mme
    # registered through the `lmms_eval.models` entry point (pyproject.toml), so the stock
    # lmms-eval command line finds it once llavakd is installed

Prompts use the training template (``llavakd.model.chat``): the system prompt, " USER: ",
"<image>\\n" for each image, the task's text, " ASSISTANT:". Decoding is greedy. Requests are
grouped by prompt length so a batch never needs padding: an answer is the same at any batch
size. ``loglikelihood`` scores the continuation as the assistant's answer.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from llavakd.model.chat import ASSISTANT_TAG, END_TOKEN, IMAGE_TOKEN, SYSTEM_PROMPT, USER_TAG


def chat_prompt(context: str, n_images: int) -> str:
    return f"{SYSTEM_PROMPT}{USER_TAG}{(IMAGE_TOKEN + chr(10)) * n_images}{context}{ASSISTANT_TAG}"


class LlavaKD(lmms):
    is_simple = True

    def __init__(self, pretrained: str, batch_size: int | str = 1, device: str = "cpu",
                 dtype: str = "float32", max_new_tokens: int = 32, **kwargs) -> None:
        super().__init__()
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        if kwargs:
            raise ValueError(f"llavakd model: unknown model_args {sorted(kwargs)}")
        self.device = torch.device(device)
        self.model = LlavaForConditionalGeneration.from_pretrained(
            pretrained, dtype=getattr(torch, dtype), local_files_only=True).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(pretrained, local_files_only=True)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.eos_id = self.processor.tokenizer.convert_tokens_to_ids(END_TOKEN)

    # -- helpers -------------------------------------------------------------------------
    def _encode(self, context: str, visuals: list):
        images = [v.convert("RGB") for v in visuals] or None
        text = chat_prompt(context, len(visuals))
        return self.processor(text=text, images=images, return_tensors="pt")

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        doc = self.task_dict[task][split][doc_id]
        return [v for v in (doc_to_visual(doc) or []) if v is not None]

    @staticmethod
    def _stop(text: str, until: list[str]) -> str:
        for s in until:
            if s and s in text:
                text = text.split(s, 1)[0]
        return text.strip()

    # -- lmms-eval API ---------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        enc, opts = [], []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            enc.append(self._encode(context, self._visuals(doc_to_visual, doc_id, task, split)))
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            limit = min(int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)), self.max_new_tokens)
            opts.append((tuple(until), limit))
        groups = defaultdict(list)
        for i, e in enumerate(enc):
            groups[(e["input_ids"].shape[1], opts[i][1], "pixel_values" in e)].append(i)
        answers = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="llavakd generate", disable=self._rank != 0)
        for (_, limit, _), idx in sorted(groups.items()):
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                batch = {k: torch.cat([enc[i][k] for i in chunk]).to(self.device) for k in enc[chunk[0]]}
                out = self.model.generate(**batch, max_new_tokens=limit, do_sample=False,
                                          eos_token_id=self.eos_id, pad_token_id=self.eos_id)
                for i, row in zip(chunk, out[:, batch["input_ids"].shape[1]:]):
                    text = self.processor.tokenizer.decode(row, skip_special_tokens=True)
                    answers[i] = self._stop(text, list(opts[i][0]))
                bar.update(len(chunk))
        bar.close()
        return answers

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

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("llavakd: multi-round generation is not used by the paper's benchmarks")


def manifest():
    """Entry-point payload for lmms-eval's model registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="llavakd", simple_class_path="llavakd.eval.adapter.LlavaKD")
