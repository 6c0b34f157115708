"""Cross-tokenizer alignment: character offsets, the ground-truth overlap, alignment scores, a pre-flight report.

- :func:`encode_example` tokenises a (prompt, response) pair with character offsets; special tokens get
  empty spans.
- :func:`overlap_matrix` is the ``[T_a, T_b]`` ground truth of METHODS.md section 8; :func:`regions`
  groups it into one-to-one / one-to-many (split) / many-to-one (merge) regions.
- :func:`alignment_scores` judges any soft alignment (CMA attention, an OT plan) against it.
- :func:`compare_tokenizers` is the first thing to run with two tokenizers.
"""

from kdviz.align.compare import TokenizerReport, compare_tokenizers
from kdviz.align.overlap import KINDS, Region, kind_counts, overlap_matrix, regions, trimmed_spans
from kdviz.align.scores import alignment_scores, row_scores
from kdviz.align.tokens import Encoded, check_fast, encode_example, encode_text, start_tokens, token_strings

__all__ = [
    "KINDS",
    "Encoded",
    "Region",
    "TokenizerReport",
    "alignment_scores",
    "check_fast",
    "compare_tokenizers",
    "encode_example",
    "encode_text",
    "kind_counts",
    "overlap_matrix",
    "regions",
    "row_scores",
    "start_tokens",
    "token_strings",
    "trimmed_spans",
]
