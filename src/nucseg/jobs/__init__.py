"""Jobs: the orchestration that the CLI and the widgets share (segment, evaluate, fine-tune, batches).

Between the core (io, inference, metrics, training) and the two faces (`nucseg.cli`, `nucseg._napari`): a job
builds on core functions and yields progress; it imports no Qt and nothing from `nucseg._napari`.
"""
