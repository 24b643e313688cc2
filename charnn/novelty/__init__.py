"""Novelty of a sample: how much of it is copied verbatim from the training text, exactly, through a suffix
array of the corpus (`spans`), cached beside the corpus cache (`index`), found for a run's model (`run`).
Not the display of it: the CLI, the report, the server and the page show what `Novelty` holds.
"""

DEFAULT_COPY_SPAN = 20  # a copied span counts from this many characters (`--copy-span`); here: the CLI reads it cheaply
