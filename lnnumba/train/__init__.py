"""Training pieces: losses, optimizers, gradient clipping, checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .losses import softmax_cross_entropy
from .optim import Adam, clip_grad_norm

__all__ = ["Adam", "clip_grad_norm", "load_checkpoint", "save_checkpoint", "softmax_cross_entropy"]
