"""Text out of a model: the draw (logits to the next symbol), generation on the carried state, the fast
stepper and its weight packing, the CUDA-graph step and beam search. Not scoring (charnn.evaluate).
"""
