"""FluxFrame's shared core: the contract both ff-index and ff-render use."""

__version__ = "0.1.0"
