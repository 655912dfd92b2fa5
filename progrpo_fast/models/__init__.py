"""Model adapters: SD3 / FLUX / SD1 diffusers pipelines, tiny test pipelines and the built-in shapes model."""
