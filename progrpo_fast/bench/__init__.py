"""Benchmarks of progrpo-fast (``progrpo-fast bench NAME``), one module per benchmark."""
