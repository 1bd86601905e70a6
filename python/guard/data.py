"""guard's data layer, the Python face of the Rust extension `guard._rust`.

    import guard.data
    keep = guard.data.dedup(prompts, responses)   # int64 numpy array of kept row indices, ascending

The heavy work runs in Rust with the GIL released (rust/); this file only adapts arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from guard import _rust


def dedup(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """Indices of the rows to keep: the first occurrence of each exact (prompt, response) pair.

    Exact (xxh3-128 over ``prompt \\0 response``, confirmed byte for byte), stable (ascending order),
    returns an int64 numpy array. Errors name the offending row: TypeError for a non-string field,
    ValueError for text that is not valid UTF-8 or for ``prompts`` and ``responses`` of different lengths.
    """
    return _rust.dedup(prompts, responses)
