"""The torch side of the pipeline: architectures, augmentation, CPU-portable numerics,
torchrun, and the training loop with its epoch selection. Only ``train`` (and the
benchmarks) import from here: the serving image has no torch.
"""
