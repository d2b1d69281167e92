"""The label of a position that no loss reads.

-100 is the ``ignore_index`` of PyTorch's cross-entropy and the value transformers pads labels
with; the templates write it, the collator pads with it, every loss skips it.
"""

IGNORE_INDEX = -100
