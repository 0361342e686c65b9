"""Masks: float32 H x W in [0, 1], 1 = edit. Specs name them; `render` draws them; `ops` shapes them."""
