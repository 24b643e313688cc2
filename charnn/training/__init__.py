"""Training: the plan fitted to the corpus and the machine, the batches, one optimisation step, the loop with
its validations and checkpoints, resume, fine-tuning, the thread governor and the schedule. Not the model.
"""
