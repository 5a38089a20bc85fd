"""Test-session defaults: notebooks run at their small size, figures render off-screen."""

import os

os.environ.setdefault("MEANFIELD_NOTEBOOK_SIZE", "small")
os.environ.setdefault("MPLBACKEND", "Agg")
