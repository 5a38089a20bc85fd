"""The distinct values of a flat array, found by one sort: sorted values and each entry's index into them.

A Gram without a norm has n (n - 1) / 2 kernel entries but only n variances. The kernels' per-variance work
(coefficients, moments) is done once per distinct variance, and at these sizes the sort that finds the
distinct variances costs more than that work (np.unique of the 4,032 variances of a 64 x 64 Gram: ~0.12 ms
on the development machine). A `Distinct` is built by one sort; the distinct values of any subset of the
entries, and the entries' indices into them, then come from the index by marking, without another sort.

Every result is exactly what np.unique(..., return_inverse=True) of the subset gives.

>>> import numpy as np
>>> d = Distinct.of(np.array([2.0, 1.0, 2.0, 3.0]))
>>> d.values.tolist(), d.index.tolist()
([1.0, 2.0, 3.0], [1, 0, 1, 2])
>>> values, (i,) = d.among(d.index[[0, 3]])
>>> values.tolist(), i.tolist()
([2.0, 3.0], [0, 1])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Distinct", "STABLE_SORT_MAX"]

STABLE_SORT_MAX = 1 << 14  # up to this many entries timsort beats quicksort on a Gram's variances (measured)


@dataclass(frozen=True)
class Distinct:
    """``values``: the sorted distinct values of a flat array x; ``index``: x = values[index]."""

    values: np.ndarray
    index: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Distinct:
        """The distinct values of the flat array ``x``: np.unique with the inverse, the same arrays.

        Up to `STABLE_SORT_MAX` entries the sort is numpy's stable one (timsort), which takes the runs of
        repeated and ordered variances in a Gram's entries at about half the cost of np.unique's quicksort
        (4,032 entries: 52 against 106 us); beyond that, and where x holds NaN, np.unique itself.
        """
        x = np.asarray(x).reshape(-1)
        if 0 < x.size <= STABLE_SORT_MAX:
            order = np.argsort(x, kind="stable")
            s = x[order]
            if s[-1] == s[-1]:  # no NaN (sorted last), which np.unique collapses into one
                new = np.empty(s.size, dtype=bool)
                new[0] = True
                np.not_equal(s[1:], s[:-1], out=new[1:])
                index = np.empty(x.size, dtype=np.intp)
                index[order] = np.cumsum(new) - 1
                return cls(s[new], index)
        values, index = np.unique(x, return_inverse=True)
        return cls(values, index.reshape(-1))

    def among(self, *indices: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """The sorted distinct values that the index arrays ``indices`` (subsets of ``index``) refer to, and
        each array re-indexed into them: np.unique(np.concatenate([values[i] for i in indices]),
        return_inverse=True), split back per array, in O(size) without a sort."""
        used = np.zeros(self.values.size, dtype=bool)
        for i in indices:
            used[i] = True
        position = np.cumsum(used) - 1
        return self.values[used], [position[i] for i in indices]

    def count(self, i: np.ndarray) -> int:
        """How many distinct values the index array ``i`` refers to."""
        used = np.zeros(self.values.size, dtype=bool)
        used[i] = True
        return int(np.count_nonzero(used))
