"""Type stub for guard._rust, the Rust data layer (rust/py.rs). Use it through guard.data."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__version__: str

def dedup(prompts: Sequence[str], responses: Sequence[str]) -> npt.NDArray[np.int64]:
    """Row indices (ascending) of the first occurrence of each exact (prompt, response) pair.

    Hashes xxh3-128 over ``prompt \\0 response`` with the GIL released, confirming equal hashes byte
    for byte. Raises TypeError naming the row for a non-string item, ValueError naming the row for
    text that is not valid UTF-8, and ValueError when the lengths differ.
    """
