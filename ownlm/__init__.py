"""ownlm: turn an app's model traffic into its own trained model, and measure what it earns."""

__version__ = "0.1.0"
