"""Shared machinery of the two engines: validation, mean-field laws, finite-width operations, array
backends, random streams and linear algebra. Nothing here names a layer type."""
