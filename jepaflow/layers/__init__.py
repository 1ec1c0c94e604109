"""Building blocks shared by plugins: one file per family (position embeddings, token gathers, ...)."""
