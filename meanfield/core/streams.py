"""Random streams of the finite-width engine: one independent generator per simulated network.

Network s draws from ``numpy.random.SeedSequence(seed).spawn(seeds)[s]`` (an SFC64 bit generator on the
host, ``cupy.random.default_rng`` on cupy), layer after layer in a fixed order, so draws do not depend on how
the seeds are chunked.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from meanfield.core.backends import Backend

__all__ = ["HostStreams", "CupyStreams", "make_streams"]


class HostStreams:
    """Per-network numpy generators; draws are generated on the host and moved to the backend."""

    def __init__(self, seqs: list, be: Backend, pool: ThreadPoolExecutor | None):
        self.gens = [np.random.Generator(np.random.SFC64(s)) for s in seqs]
        self.be = be
        self.pool = pool
        self._bufs: dict = {}

    @property
    def size(self) -> int:
        return len(self.gens)

    def normal(self, shape: tuple, reuse: bool = False):
        """(seeds, *shape) standard normals in the compute dtype; reuse=True may hand back the buffer of an
        earlier call of the same shape (only when the caller keeps no reference to it)."""
        full = (len(self.gens), *shape)
        dt = self.be.np_dtype
        buf = self._bufs.get(full) if reuse else None
        if buf is None:
            buf = np.empty(full, dtype=dt)
            if reuse:
                self._bufs[full] = buf

        def fill(i):
            self.gens[i].standard_normal(out=buf[i], dtype=dt)

        per = int(np.prod(shape))
        if self.pool is not None and len(self.gens) > 1 and per >= 16384:
            list(self.pool.map(fill, range(len(self.gens))))
        else:
            for i in range(len(self.gens)):
                fill(i)
        return self.be.asarray(buf)

    def chisquare(self, df: int, shape: tuple):
        """(seeds, *shape) chi-square variables with df degrees of freedom (0 where df == 0)."""
        if df <= 0:
            return self.be.asarray(np.zeros((len(self.gens), *shape)))
        return self.be.asarray(np.stack([g.chisquare(df, size=shape) for g in self.gens]))


class CupyStreams:
    """Per-network cupy generators (cupy.random.default_rng seeded by the spawned SeedSequence)."""

    def __init__(self, seqs: list, be: Backend):
        import cupy

        self.cp = cupy
        self.gens = [cupy.random.default_rng(s) for s in seqs]
        self.be = be
        self._bufs: dict = {}

    @property
    def size(self) -> int:
        return len(self.gens)

    def normal(self, shape: tuple, reuse: bool = False):
        full = (len(self.gens), *shape)
        buf = self._bufs.get(full) if reuse else None
        if buf is None:
            buf = self.cp.empty(full, dtype=self.be.np_dtype)
            if reuse:
                self._bufs[full] = buf
        for i, g in enumerate(self.gens):
            g.standard_normal(size=shape, dtype=self.be.np_dtype, out=buf[i])
        return buf

    def chisquare(self, df: int, shape: tuple):
        if df <= 0:
            return self.cp.zeros((len(self.gens), *shape), dtype=self.be.np_dtype)
        out = [2.0 * g.standard_gamma(df / 2.0, size=shape) for g in self.gens]
        return self.cp.stack(out).astype(self.be.np_dtype)


def make_streams(seqs: list, be: Backend, pool: ThreadPoolExecutor | None):
    """The streams of networks ``seqs`` (spawned SeedSequences) on the backend ``be``."""
    return CupyStreams(seqs, be) if be.kind == "cupy" else HostStreams(seqs, be, pool)
