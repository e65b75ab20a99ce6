"""Where data comes from and how it is batched."""
