"""placeholder, being written."""
def coefficients(*a, **k): raise NotImplementedError
def second_moment(*a, **k): raise NotImplementedError
def tail_mass(*a, **k): raise NotImplementedError
