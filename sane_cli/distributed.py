"""Data-parallel runs over torch.distributed: ``torchrun --nproc_per_node N sane-run ...`` (one node or several),
or a multi-task SLURM job, with gloo on the CPU and NCCL on GPUs.

Each rank holds a contiguous shard of the training set (and of the test set and the Hessian's subset). Every sum
over examples is the sum of the ranks' sums: the training gradient, the loss and accuracy, the curvature's
Hessian-vector products and the exact builds' matrices, each rank's weighted by its share of the examples
(:meth:`World.pool`) and all-reduced, so that every rank holds the same numbers and runs the same solver steps
(Lanczos, SLQ, the eigensolvers) on them. Rank 0 alone owns the run folder: it composes the config (Hydra), claims
and writes the folder, and sends each job's config, and a resumed run's checkpoint, to the other ranks
(:func:`follow`), which never write to the disk.

In a single process (:data:`SINGLE`, what every run is unless started by torchrun or as a multi-task job) every
method here returns its input unchanged: a run's numbers are those of a plain run.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class RankLost(RuntimeError):
    """A collective operation failed: another rank of the job stopped (killed, out of memory, its machine
    gone). The run stops where a signal would stop it: its record says where, and it resumes from its
    checkpoint."""


@dataclass
class World:
    """The processes of one data-parallel job: this one's ``rank`` among ``size``, ``local_rank`` among the
    ``local_size`` of its machine, and the ``backend`` of its collectives (gloo; with GPUs, NCCL for tensors on
    them and gloo for those on the CPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None
    in_job: bool = False  # the ranks run a job together (rank 0 has sent it): their collectives are paired

    @property
    def main(self) -> bool:
        """Whether this process owns the run folder (rank 0)."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` examples (the first ``n % size`` ranks take one more)."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def sum(self, t):
        """``t`` summed over the ranks, in place (every rank gets the same bytes)."""
        if self.size == 1:
            return t
        import torch.distributed as dist

        _collective(dist.all_reduce, t)  # on its device: NCCL for a GPU's tensors, gloo for the CPU's
        return t

    def sum_differentiable(self, t):
        """``t`` summed over the ranks, as a new tensor whose gradient is summed over the ranks too (statistics
        of the whole batch inside a forward pass: synchronised batch normalisation)."""
        if self.size == 1:
            return t
        import torch.distributed.nn.functional as dist_nn

        out = []
        _collective(lambda: out.append(dist_nn.all_reduce(t)))
        return out[0]

    def total(self, count: float) -> float:
        """A number summed over the ranks (counts, losses), in float64."""
        if self.size == 1:
            return count
        import torch

        return float(self.sum(torch.tensor([float(count)], dtype=torch.float64))[0])

    def share(self, n_local: int) -> float:
        """This rank's share of the examples: ``n_local`` over their total."""
        return 1.0 if self.size == 1 else n_local / self.total(n_local)

    def pool(self, t, n_local: int):
        """The mean over every rank's examples of a quantity given as the mean over this rank's ``n_local``:
        ``t`` weighted by its share and summed over the ranks (in place)."""
        if self.size == 1:
            return t
        return self.sum(t.mul_(self.share(n_local)))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled)."""
        if self.size == 1:
            return obj
        import torch
        import torch.distributed as dist

        box = [obj if self.main else None]
        _collective(dist.broadcast_object_list, box, src=0, device=torch.device("cpu"))
        return box[0]


SINGLE = World()
_world = SINGLE


def current() -> World:
    """The job this process belongs to (:data:`SINGLE` unless :func:`start` joined one)."""
    return _world


def launched() -> bool:
    """Whether this process was started as one rank of several: by torchrun (``WORLD_SIZE``), or as a task of a
    multi-task SLURM job (``SLURM_NTASKS``, with ``SLURM_PROCID``), submitit's ``tasks_per_node`` included."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 or (
        "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1
        and "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ  # a task of `srun`, not the batch script
    )  # fmt: skip


def start() -> World:
    """Join the job this process was launched into (:func:`launched`): gloo on the CPU; where there are GPUs, NCCL
    for the tensors on them (one GPU a rank: this rank's is its local rank's) and gloo for those on the CPU.
    :data:`SINGLE` otherwise."""
    global _world
    if not launched():
        return _world
    import torch
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ:  # a SLURM task: the variables torchrun would have set
        _environment_from_slurm()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    # long enough for rank 0 to download a dataset while the others wait for the job
    dist.init_process_group(backend, rank=rank, world_size=size, timeout=dt.timedelta(minutes=60))
    _world = World(rank, size, local_rank, local_size, backend)
    return _world


def _environment_from_slurm() -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from a SLURM task's
    variables (the first node of the job's list is the master)."""
    import subprocess

    env = os.environ
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    tasks = env.get("SLURM_NTASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "1")).split("(")[0].split(",")[0]
    env["LOCAL_WORLD_SIZE"] = tasks
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "localhost"))
        try:
            first = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                                   check=True).stdout.split()[0]  # fmt: skip
        except (OSError, subprocess.CalledProcessError, IndexError):
            first = nodes.split(",")[0]
        env["MASTER_ADDR"] = first
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))


def _collective(fn, *args, **kwargs) -> None:
    """A collective operation; its failure (a rank gone) as :class:`RankLost`."""
    try:
        fn(*args, **kwargs)
    except RuntimeError as e:  # gloo's and NCCL's errors (DistBackendError is one)
        if isinstance(e, RankLost):
            raise
        raise RankLost(f"a rank of the {_world.size}-rank job stopped ({_first_sentence(e)})") from e


def _first_sentence(e: BaseException) -> str:
    """The gist of a backend's error: its first sentence, without the source location gloo puts first."""
    import re

    line = next((s.strip() for s in str(e).splitlines() if s.strip()), type(e).__name__)
    return re.sub(r"^\[[^\]]*\]\s*", "", line).split(". ")[0].rstrip(".")


# rank 0 to the others, between jobs: ("job", (config, checkpoint)) or ("end", exit status)
def send_job(config: dict, checkpoint: dict | None) -> None:
    """Rank 0: the next job, to be run by every rank (:func:`follow`)."""
    world = current()
    if world.size > 1:
        world.broadcast(("job", (config, checkpoint)))
        world.in_job = True


def end_job() -> None:
    """A job ended on every rank (its last collective done): the ranks are between jobs."""
    current().in_job = False


def finish(status: int) -> None:
    """Rank 0, leaving: tell the other ranks to end with ``status``, where they wait for a job; within a job
    (rank 0 failed alone) they learn of it from their next collective, which fails."""
    world = current()
    if world.size == 1 or not world.main:
        return
    try:
        if not world.in_job:
            world.broadcast(("end", int(status)))
    except RuntimeError:  # the others are gone already
        pass
    _leave()


def follow(prepare=None) -> int:
    """A rank other than 0: run the jobs rank 0 sends, until it says the end; returns the exit status.
    ``prepare(cfg)`` is called with each job's config before it runs (sane-run sets the threads there)."""
    from .training import follow_job

    logging.getLogger("sane_cli").setLevel(logging.ERROR)  # rank 0 logs the job
    world = current()
    while True:
        try:
            kind, body = world.broadcast(None)
        except RankLost:  # rank 0 stopped without a word: it says why
            return 1
        if kind == "end":
            _leave()
            return int(body)
        config, checkpoint = body
        world.in_job = True
        try:
            follow_job(config, checkpoint, prepare)
        except KeyboardInterrupt as e:  # stopped by a signal with rank 0 (which records it)
            _leave()
            return 128 + int(getattr(e, "signum", 2))
        except RankLost:
            return 1
        except Exception:  # a failure every rank met (rank 0 records it); a failed job ends a distributed sweep
            log.debug("rank %d: the job failed", world.rank, exc_info=True)
            _leave()
            return 1
        world.in_job = False


def _leave() -> None:
    import contextlib

    import torch.distributed as dist

    with contextlib.suppress(RuntimeError, ValueError):
        dist.destroy_process_group()
