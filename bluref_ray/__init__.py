"""bluref-ray: unsupervised deblurring at fleet scale on Ray.

BluRef (pseudo-sharp targets from sharp reference frames, a deblurrer trained on them) exists
today; Blur2Blur and Ref-NAFNet are planned.
"""

__version__ = "0.1.0"
