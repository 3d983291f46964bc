"""The loss: the public divergence(), the criterion ((1 - kd_rate)·CE + kd_rate·KD) and AdaKD."""
