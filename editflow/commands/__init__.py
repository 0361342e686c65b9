"""The CLI's commands beside `run`/`edit`/`validate`: `models`, `masks` previews, `manifest tryon`."""
