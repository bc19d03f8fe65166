"""NeuralDX7 in JAX/Flax: an attention VAE with triangular Sylvester flows over DX7 voices."""

__version__ = "0.1.0"
