"""stagemfu: how well each stage of a model uses the GPU, from Nsight Systems traces."""

__version__ = "0.1.0"
