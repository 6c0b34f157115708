"""Cross-tokenizer alignment: character offsets, the ground-truth overlap, alignment scores, a pre-flight report.

- :func:`encode_example` tokenises a (prompt, response) pair with character and UTF-8 byte offsets;
  special tokens get empty spans.
- :func:`overlap_matrix` is the ``[T_a, T_b]`` ground truth of docs/methods.md#ground-truth-alignment (tokens
  sharing a byte); :func:`regions`
  groups it into one-to-one / one-to-many (split) / many-to-one (merge) regions.
- :func:`alignment_scores` judges any soft alignment (CMA attention, an OT plan) against it.
- :func:`compare_tokenizers` is the first thing to run with two tokenizers; :func:`token_table` is what
  :func:`kdviz.viz.tokenizer_comparison` draws.
- :func:`align_tokens` (DTW on edit distance) and :func:`vocab_map` (teacher -> student ids, cached) serve
  MinED; :func:`index_pairs` / :func:`overlap_pairs` pair positions for ULD and MultiLevelOT;
  :func:`sinkhorn_plans` solves a batch of entropic OT problems (batched plain rounds or POT's log domain).
"""

from kdviz.align.compare import TokenizerReport, compare_tokenizers
from kdviz.align.dtw import TokenAlignment, align_tokens, dtw_path
from kdviz.align.overlap import KINDS, Region, kind_counts, overlap_matrix, regions, trimmed_spans
from kdviz.align.positions import index_pairs, overlap_pairs
from kdviz.align.scores import alignment_scores, row_scores
from kdviz.align.tokens import (
    Encoded,
    check_fast,
    encode_example,
    encode_text,
    start_tokens,
    token_strings,
    token_table,
)
from kdviz.align.transport import Transport, sinkhorn_plans
from kdviz.align.vocab_map import VocabMap, vocab_map

__all__ = [
    "KINDS",
    "Encoded",
    "Region",
    "TokenAlignment",
    "TokenizerReport",
    "Transport",
    "VocabMap",
    "align_tokens",
    "alignment_scores",
    "check_fast",
    "compare_tokenizers",
    "dtw_path",
    "encode_example",
    "encode_text",
    "index_pairs",
    "kind_counts",
    "overlap_matrix",
    "overlap_pairs",
    "regions",
    "row_scores",
    "sinkhorn_plans",
    "start_tokens",
    "token_strings",
    "token_table",
    "trimmed_spans",
    "vocab_map",
]
