"""Seeds for vendors that take one: the user's, or a random one we pick and report.

An empty seed means "random". We never leave the choice to the vendor (−1):
we pick the number ourselves, send it, and store it on every result, so a
look the user likes can be reproduced. The pick is saved on the job before
the vendor call, so a resumed run sends the same seed again.
"""

from __future__ import annotations

import secrets

from studio.vendors.base import JobInput

MAX_SEED = 2**31 - 1  # the upper bound every vendor here documents


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED) + 1


def seed_for(job: JobInput, value=None) -> int:
    """The seed this job sends: the given one, else the one picked earlier, else a new random one."""
    if value is None:
        value = job.params.get("seed")
    if value not in (None, "") and int(value) >= 0:
        return int(value)
    if isinstance(job.state.get("seed"), int):
        return job.state["seed"]
    seed = random_seed()
    job.save_state(seed=seed)
    return seed
