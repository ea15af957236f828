"""Where this process stands in a distributed job, read from the environment that torchrun
(`torch.distributed.run`) gives every process it starts, without importing torch.

Importing torch takes seconds, so the command line reads the launcher's variables first and imports
torch only when there really are other ranks to coordinate with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import FusionFastError

#: What torch's own store-based coordination needs: without these there is nobody to meet.
RENDEZVOUS_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: Set only by torchrun's elastic agent (not by a hand-written RANK / WORLD_SIZE).
ELASTIC_ENV = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")


@dataclass(frozen=True)
class Launch:
    """This process's place in the job: 0 of 1 when it runs alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    #: Started by torchrun's elastic agent.
    torchrun: bool = False
    #: MASTER_ADDR / MASTER_PORT are set: the ranks can meet through torch's TCP store.
    rendezvous: bool = False

    @property
    def distributed(self) -> bool:
        """More than one rank in the job."""
        return self.world_size > 1

    @property
    def needs_coordination(self) -> bool:
        """Other ranks exist and can be reached: only then is torch.distributed worth importing."""
        return self.distributed and self.rendezvous

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Launch:
        """Read RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE (and whether torchrun set them).

        Missing variables take the single-process value; a value that is not a whole number in range
        raises `FusionFastError` naming the variable, since guessing would make ranks disagree."""
        env = os.environ if environ is None else environ
        world_size = _number(env, "WORLD_SIZE", 1, minimum=1)
        rank = _number(env, "RANK", 0, minimum=0)
        local_world_size = _number(env, "LOCAL_WORLD_SIZE", 1, minimum=1)
        # Launch scripts often export LOCAL_RANK=-1 to mean "not distributed" (the convention of
        # argparse defaults in many training scripts): alone, that is the single-process value.
        alone = world_size == 1
        local_rank = _number(env, "LOCAL_RANK", 0, minimum=0, negative_means_unset=alone)
        if rank >= world_size:
            raise FusionFastError(
                f"RANK={rank} is not below WORLD_SIZE={world_size} in the environment: "
                "fix the launcher's settings or unset them to run as a single process"
            )
        return cls(
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            local_world_size=local_world_size,
            torchrun=any(k in env for k in ELASTIC_ENV),
            rendezvous=all(k in env for k in RENDEZVOUS_ENV),
        )


def _number(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, negative_means_unset: bool = False
) -> int:
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    else:
        if value < 0 and negative_means_unset:
            return default
    if value < minimum:
        raise FusionFastError(
            f"{name}={text!r} in the environment is not a whole number >= {minimum}: "
            "fix the launcher's settings or unset it to run as a single process"
        )
    return value


def launch() -> Launch:
    """This process's `Launch`, from `os.environ`."""
    return Launch.from_env()


__all__ = ["ELASTIC_ENV", "RENDEZVOUS_ENV", "Launch", "launch"]
