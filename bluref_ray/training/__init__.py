"""Ray Train loops: the dense matcher (and, later, the deblurrer and Blur2Blur)."""
