"""Recording what a distillation does: the Recorder and its probes, the run store, and its reader."""

from kdviz.record.batchview import RecordBatch
from kdviz.record.reader import Matrix, Run, TornRecordWarning, load_replay, open_run
from kdviz.record.recorder import Recorder
from kdviz.record.store import FORMAT_VERSION

__all__ = ["FORMAT_VERSION", "Matrix", "RecordBatch", "Recorder", "Run", "TornRecordWarning", "load_replay", "open_run"]
