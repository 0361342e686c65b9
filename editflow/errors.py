"""The one exception family: every error editflow raises on purpose derives from `EditflowError`.

Each kind also keeps the built-in base it had (ValueError for bad input, RuntimeError for a
missing model or detection), so existing `except ValueError` code keeps working. The module sits
at the bottom of the import graph: any layer may import it.
"""

from __future__ import annotations


class EditflowError(Exception):
    """Base of every error editflow raises on purpose; the message is meant for the user."""
