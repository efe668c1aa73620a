"""Multi-process (DDP) training under Hydra: how Lightning's child processes are started and ended.

With `trainer=ddp`/`ddp_cpu` on one machine, Lightning re-runs the command once per extra device
(`LOCAL_RANK=1..N-1`). Its Hydra support (lightning 2.6, `_hydra_subprocess_cmd`) re-runs
`sys.argv` plus `hydra.run.dir=<hydra.run.dir>`, which breaks in two ways:

- in a multirun, `sys.argv` holds `-m` and the whole sweep, so every child starts a sweep of its
  own, and `hydra.run.dir` is not where the job runs (that is `<sweep dir>/<job>`);
- `hydra.run.dir` still holds `${now:...}`, resolved again, so a child can land in another folder.

`hydra_subprocess_cmd` starts each child as a single run of *this job*: its own overrides (the
swept values included), `hydra.run.dir` set to the job's resolved output folder, and
`hydra.mode=RUN` (an Optuna search config sets MULTIRUN). Under SLURM the processes are started by
`srun` (hydra/launcher=submitit_slurm) and none of this is used.
"""
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Sequence

# what Lightning's subprocess launcher sets in the launching process's environment
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def hydra_subprocess_cmd(local_rank: int) -> tuple[Sequence[str], str]:
    """The command and working directory of DDP child process `local_rank` of this Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hydra = HydraConfig.get()
    if __main__.__spec__ is None:  # started as a script path, not with -m
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += list(hydra.overrides.task)
    command += [
        f'hydra.run.dir="{hydra.runtime.output_dir}"',
        "hydra.mode=RUN",
        f"hydra.job.name=train_ddp_process_{local_rank}",
        # rank 0 writes the run's .hydra/ folder; children must not overwrite it
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


@contextmanager
def distributed_job() -> Iterator[None]:
    """Around one training job: DDP children start as above, and the process group the job
    created is destroyed at its end, so the next job of a multirun starts a fresh one (with
    its own children) instead of waiting on the previous job's exited ranks."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as pytorch_launcher

    # both modules hold their own reference to the function
    fabric_launcher._hydra_subprocess_cmd = pytorch_launcher._hydra_subprocess_cmd = hydra_subprocess_cmd
    # the launcher leaves LOCAL_RANK & co. in os.environ, and a set LOCAL_RANK tells the next
    # job's launcher that processes are created externally: it would start no children and hang
    saved = {key: os.environ.get(key) for key in LAUNCHER_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
