"""The data the search trains on: data sets (`datasets`), their transforms and the deterministic, resumable
loader (`loader`). Independent of spaces and tables."""
