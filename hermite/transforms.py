"""placeholder, being written."""
def transform(*a, **k): raise NotImplementedError
