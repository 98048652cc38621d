"""Records: the value codec and revision trees (pure code, no I/O)."""
