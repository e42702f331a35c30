"""Data: the synthesizer, source readers, sharpness scores and reference selection."""
