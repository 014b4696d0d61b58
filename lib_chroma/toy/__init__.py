"""Embedded reference model: synthetic "faces" data, a ground-truth scorer, a tiny UNet and its training.

Nothing here imports the WebUI; the package needs only numpy and torch.
"""
