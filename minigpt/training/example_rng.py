"""Dropout masks that depend on where an example sits in the global batch, not on who computes it.

A single ``np.random.Generator`` hands out numbers in call order: the masks of row 5 would then depend
on how many rows came before it in the same forward - on the number of ranks and of accumulation
steps the global batch was cut into. ``ExampleRng`` gives every example its own stream instead,

    stream(seed, step, g) = np.random.default_rng([seed, step, g])      g: the row's index in the
                                                                           global batch of this step

and answers the dropout layers' one question, ``rng.random(shape)`` with ``shape[0]`` the rows of the
(micro-)batch, by stacking one draw per row from that row's stream. Row g draws the same masks in the
same order (embedding, then each block's attention and residual dropouts) whichever process holds it
and whichever rows are beside it, so one process with the whole batch and N ranks with a shard each
drop the same units. The stream of a step is a pure function of (seed, step): a resumed run needs no
saved RNG state to draw the same masks.
"""

from __future__ import annotations

import numpy as np


class ExampleRng:
    """Per-example random streams for rows ``first .. first + rows - 1`` of step ``step``'s batch."""

    def __init__(self, seed: int, step: int, first: int, rows: int):
        self.seed, self.step, self.first, self.rows = int(seed), int(step), int(first), int(rows)
        self.streams: list[np.random.Generator] | None = None   # made at the first draw


    def random(self, shape) -> np.ndarray:
        """Uniform [0, 1) floats of ``shape`` (rows, ...): row i from example first + i's stream."""
        shape = tuple(shape)
        if not shape or shape[0] != self.rows:
            raise ValueError(f"ExampleRng serves batches of {self.rows} rows (one stream per "
                             f"example); a draw of shape {shape} does not start with that many rows")
        if self.streams is None:
            self.streams = [np.random.default_rng([self.seed, self.step, g])
                            for g in range(self.first, self.first + self.rows)]
        out = np.empty(shape)                                   # (rows, ...) float64
        for i, stream in enumerate(self.streams):
            out[i] = stream.random(shape[1:])
        return out
