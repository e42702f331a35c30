"""bluref-ray: unsupervised deblurring at fleet scale on Ray (BluRef, Ref-NAFNet, Blur2Blur)."""

__version__ = "0.1.0"
