"""The one masked diffusion sampler and the denoisers that plug into it."""
