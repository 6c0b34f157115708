"""Building blocks shared by the losses, the methods and the recorder.

- :data:`IGNORE` (-100): the label of a position that is not trained (Hugging Face's convention).
- :func:`shift_left`, :func:`next_token_targets`, :func:`shift_alignment`: logits at position ``t`` predict token
  ``t + 1``.
"""

from kdviz.ops.targets import IGNORE, next_token_targets, shift_alignment, shift_left

__all__ = ["IGNORE", "next_token_targets", "shift_alignment", "shift_left"]
