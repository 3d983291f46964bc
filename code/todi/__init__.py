"""ToDi / AdaKD knowledge distillation for LLMs: losses, training, evaluation."""

__version__ = "0.1.0"
