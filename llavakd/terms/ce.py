"""CE: the next-token cross-entropy on the dataset's answers, mean over the supervised positions."""

from __future__ import annotations

from llavakd.terms.base import NaiveInputs, TermSpec


class CrossEntropyRows:
    """Per-row -log p_s(y) and its gradient p_s - onehot(y) (rows without a target: 0 after the mask)."""

    key = ("cross_entropy",)
    grad_scale = 1.0

    def __call__(self, s, t, target, need_grad):
        import torch

        from llavakd.labels import IGNORE_INDEX

        y = target.clamp_min(0)[:, None]
        ok = target != IGNORE_INDEX
        logp = torch.log_softmax(s, -1)
        rows = -logp.gather(1, y).squeeze(1) * ok
        if not need_grad:
            return rows, None
        d = logp.exp_()
        d.scatter_add_(1, y, -ok.to(s.dtype)[:, None])  # p - onehot(y), no host sync
        return rows, d

    @staticmethod
    def reduce(rows, mask):
        return rows.sum().double()


def naive(x: NaiveInputs, cfg):
    import torch.nn.functional as F

    from llavakd.labels import IGNORE_INDEX

    sup = x.labels[:, 1:] != IGNORE_INDEX
    n = int(sup.sum())
    value = F.cross_entropy(x.student[:, :-1][sup], x.labels[:, 1:][sup], reduction="sum") / max(n, 1)
    return value, n


SPEC = TermSpec(
    name="ce", title="CE", summary="next-token cross-entropy on the dataset's answers", teacher=False,
    reads="the student's logit rows at the supervised (response) positions", count="responses", rows="responses",
    row_kernel=lambda cfg: CrossEntropyRows(), naive=naive, default_on=True, added=False,
)
