"""editflow: batch diffusion image editing (inpainting, SDEdit, RePaint, try-on, makeup)."""

__version__ = "0.1.0"
