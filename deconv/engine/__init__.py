"""The engine: the forward graph and its trace, the reverse pass, the chunk plan, windows and receptive fields."""
