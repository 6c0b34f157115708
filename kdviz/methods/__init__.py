"""Knowledge-distillation methods: each an ``nn.Module`` called as ``method(batch)`` returning a ``KDOutput``.

- :class:`SFT`: cross-entropy on the gold response only, the floor KD is compared with.
- :class:`VanillaKD`: same tokenizer, any divergence of :data:`kdviz.DIVERGENCES`.
- :class:`DSKD`: dual-space KD, same tokenizer (docs/methods.md#dskd).
- :class:`CMA`: DSKD with cross-model attention, different tokenizers (docs/methods.md#cma).
- :class:`ULD`: universal logit distillation, W1 between sorted distributions (docs/methods.md#uld).
- :class:`MinED`: minimum-edit-distance token alignment and vocabulary map (docs/methods.md#mined).
- :class:`MultiLevelOT`: token- and sequence-level optimal transport, HAD + SL + SD (docs/methods.md#multilevelot).

Batches come from :class:`KDCollator`; see :class:`KDBatch` for the fields. Diagnostics are the typed
records of :mod:`kdviz.methods.diagnostics` (:class:`Alignment`, :class:`Transport`, :class:`TokenValues`, ...).
"""

from kdviz.methods.base import IGNORE, KDBatch, KDOutput, Method, next_token_targets
from kdviz.methods.cma import CMA
from kdviz.methods.collate import KDCollator
from kdviz.methods.diagnostics import Alignment, Logits, RankPairs, TokenEvents, TokenValues, Transport
from kdviz.methods.dskd import DSKD
from kdviz.methods.mined import MinED
from kdviz.methods.multilevel_ot import MultiLevelOT
from kdviz.methods.sft import SFT
from kdviz.methods.uld import ULD
from kdviz.methods.vanilla import VanillaKD

__all__ = [
    "Alignment",
    "CMA",
    "DSKD",
    "IGNORE",
    "KDBatch",
    "KDCollator",
    "KDOutput",
    "Logits",
    "Method",
    "MinED",
    "MultiLevelOT",
    "RankPairs",
    "SFT",
    "TokenEvents",
    "TokenValues",
    "Transport",
    "ULD",
    "VanillaKD",
    "next_token_targets",
]
