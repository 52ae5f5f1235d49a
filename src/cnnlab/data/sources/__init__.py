"""Dataset sources; importing this package registers each of them."""

from cnnlab.data.sources import digits  # noqa: F401
