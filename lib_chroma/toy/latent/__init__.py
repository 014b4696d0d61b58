"""The SD-like latent reference model: synthetic faces with prompt attributes, KL autoencoder, text encoder,
attention UNet with classifier-free guidance, its scorer, training and shipped weights.

Nothing here imports the WebUI; the package needs only numpy and torch (k-diffusion for sampling).
"""
