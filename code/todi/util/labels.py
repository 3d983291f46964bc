"""The label convention shared by data, kernels and criterion: positions without a target.

Prompt and padding positions get ``IGNORE_INDEX`` (Hugging Face's and the official code's -100);
labels are aligned with the logits (``labels[..., i]`` is the target of position i).
"""

IGNORE_INDEX = -100
