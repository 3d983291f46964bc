"""SFT and knowledge distillation on DeepSpeed: ``torchrun ... code/distillation.py --help``."""

from todi.trainer import main

if __name__ == "__main__":
    main()
