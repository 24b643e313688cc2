"""What charnn keeps on disk: durable file writes, the corpus cache, the checkpoint format and its metadata
record, the run directory (saving and choosing checkpoints) and the run's lock. Not the model or the loop.
"""
