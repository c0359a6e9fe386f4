"""dequant: dequantization and color transfer with diffusion models."""

__version__ = "0.1.0"
