"""sane-run's Hydra plugins: a sweeper that runs every job whatever another's end and says at the end how each
ended, and the joblib and submitit launchers with their jobs kept apart (a job whose process dies is lost
alone). The work is done in :mod:`sane_cli.sweeps`; ``sane-run`` registers these with Hydra
(:func:`register`), and Hydra's plugin scan finds them where the package is installed as files.
"""

# no `from __future__ import annotations`: Hydra's scan runs this module before it is in sys.modules, where a
# dataclass cannot resolve annotations given as strings
import logging
import threading
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher

from sane_cli import sweeps

_config_lock = threading.Lock()
log = logging.getLogger(__name__)


class SaneSweeper(BasicSweeper):
    """Hydra's basic sweeper (the same jobs, numbers and folders) that reads each job's outcome instead of raising
    the first failure, and keeps them for ``sane-run``'s account (:data:`sane_cli.sweeps.outcomes`).

    ``stop_on_failure``: the first failed job stops the sweep (jobs not yet started do not run; those running
    finish). ``retry_failed``: a sweep started again retries its failed jobs (from their last checkpoint). Both are
    read by each job from the sweep's config (``hydra.sweeper``), wherever it runs."""

    def __init__(self, max_batch_size=None, params=None, stop_on_failure: bool = False, retry_failed: bool = False):
        super().__init__(max_batch_size=max_batch_size, params=params)

    def sweep(self, arguments: list[str]) -> Any:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        params = [*self._parse_config(), *arguments]
        overrides = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(params)
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        sweeps.begin(sweep_dir)
        returns, first = [], 0
        try:
            while not self.is_done():
                batch = self.get_job_batch()
                self.validate_batch_is_legal(batch)
                results = self.launcher.launch(batch, initial_job_idx=first)
                sweeps.outcomes.extend(_outcome(r) for r in results)
                first += len(batch)
                returns.append(results)
        finally:
            sweeps.end(sweep_dir)
        return returns


def _outcome(ret: JobReturn) -> dict[str, str]:
    """A job's outcome from what its launcher returned: the app's own, or the error that escaped it."""
    if ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, dict):
        return ret.return_value
    where = getattr(getattr(getattr(ret.hydra_cfg, "hydra", None), "runtime", None), "output_dir", None)
    error = ret._return_value
    return sweeps.outcome(where or "(unknown folder)", "failed", f"{type(error).__name__}: {error}".splitlines()[0])


def job_dir(launcher: Launcher, overrides: list[str], num: int) -> str:
    """The folder Hydra gives job ``num`` of a sweep, worked out in the sweep's process (for a job whose process
    died before it could say)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with _config_lock:
        previous = HydraConfig.instance().cfg
        try:
            cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.num = num
                cfg.hydra.job.id = f"{cfg.hydra.job.name}_{num}"
            HydraConfig.instance().set_config(cfg)
            return str((Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)).absolute())
        except Exception as e:  # noqa: BLE001 - the account names the job by number then
            return f"job {num} ({type(e).__name__} working out its folder)"
        finally:
            HydraConfig.instance().cfg = previous


def _lost(launcher: Launcher, overrides: list[str], num: int, status: str, line: str) -> JobReturn:
    ret = JobReturn()
    ret.status, ret.return_value = JobStatus.COMPLETED, sweeps.outcome(job_dir(launcher, overrides, num), status, line)
    return ret


class JoblibLauncher(Launcher):
    """``hydra/launcher=joblib``: Hydra's joblib launcher's jobs (``n_jobs`` at a time, -1 one per usable core, in
    loky's worker processes, each job run by the plugin's ``execute_job``), with each worker a pool of its own, so
    that a worker killed alone takes only its job and a new worker goes on with the queue
    (:func:`sane_cli.sweeps.run_apart`)."""

    def __init__(self, **kwargs: Any) -> None:
        self.config = self.task_function = self.hydra_context = None
        self.joblib = kwargs

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides, initial_job_idx: int):
        import functools

        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, filter_overrides, setup_globals
        from hydra_plugins.hydra_joblib_launcher._core import execute_job

        from sane_cli.devices import usable_cores

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        n_jobs = sweeps.workers(int(self.joblib.get("n_jobs", -1)), usable_cores())
        log.info(
            f"Launching {len(job_overrides)} jobs, {n_jobs} at a time, sweep output dir: {self.config.hydra.sweep.dir}"
        )
        for idx, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + idx} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()
        calls = [
            functools.partial(
                execute_job,
                initial_job_idx + idx,
                overrides,
                self.hydra_context,
                self.config,
                self.task_function,
                state,
            )  # fmt: skip
            for idx, overrides in enumerate(job_overrides)
        ]

        def lost(i: int, error: BaseException) -> JobReturn:
            return _lost(self, job_overrides[i], initial_job_idx + i, "killed", sweeps.died(error))

        return sweeps.run_apart(calls, n_jobs, lost)


try:  # the submitit launchers, where their plugin is installed
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as _Local
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _Slurm
except ImportError:  # pragma: no cover - without the slurm extra
    _Local = _Slurm = None

if _Local is not None:

    class _Gathering:
        """submitit's launcher (Hydra's ``BaseSubmititLauncher.launch``, step for step) whose results are gathered
        one job at a time: a job whose process died (killed, cancelled, out of requeues) is accounted for alone and
        the others waited for (:func:`sane_cli.sweeps.gathered`), where Hydra's raises at the first."""

        def launch(self, job_overrides, initial_job_idx: int):
            import os

            import submitit
            from hydra.core.singleton import Singleton
            from hydra.core.utils import filter_overrides
            from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
            from omegaconf import OmegaConf
            from submitit.core.utils import FailedJobError

            init_keys = {"max_num_timeout", "submitit_folder"}
            init = {}
            if "max_num_timeout" in self.params:
                init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
            executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"], **init)
            base = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                          for k, v in self.params.items() if k not in init_keys})  # fmt: skip
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            params = []
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
            jobs = executor.map_array(self, *zip(*params, strict=True))

            def lost(i: int, error: BaseException) -> JobReturn:
                text = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
                if isinstance(error, FailedJobError):
                    status, line = "failed", text[-1] if text else "its job failed"
                else:
                    status, line = "killed", f"its job ended without a result ({text[0][:200] if text else ''})"
                return _lost(self, job_overrides[i], initial_job_idx + i, status, line)

            return sweeps.gathered(jobs, lost)

        def __call__(self, *args: Any) -> Any:
            """A job in submitit's process; with ``tasks_per_node`` (times ``nodes``) above 1, one rank of a
            data-parallel job (sane_cli.distributed): task 0 runs Hydra's job and owns its folder, the others
            follow it and write nothing."""
            import submitit
            from submitit.helpers import TorchDistributedEnvironment

            from sane_cli import distributed

            if submitit.JobEnvironment().num_tasks == 1:
                return super().__call__(*args)
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            world = distributed.start()
            if not world.main:
                from sane_cli.cli import _set_threads

                launcher = self.config.hydra.launcher
                return distributed.follow(prepare=lambda cfg: _set_threads(cfg.get("threads"), launcher))
            status = 1
            try:
                ret = super().__call__(*args)
                status = 0
                return ret
            finally:
                distributed.finish(status)

    class SubmititLocalLauncher(_Gathering, _Local):
        """``hydra/launcher=submitit_local``: Hydra's submitit launcher on this machine, results gathered per job."""

    class SubmititSlurmLauncher(_Gathering, _Slurm):
        """``hydra/launcher=slurm`` (and ``submitit_slurm``): Hydra's submitit launcher on SLURM, results gathered
        per job."""


@dataclass
class JoblibConf:
    """``hydra/launcher=joblib``: ``n_jobs`` jobs at a time (-1: one per core); each job gets cores / n_jobs
    threads unless ``threads`` is set."""

    _target_: str = "hydra_plugins.sane_run.JoblibLauncher"
    n_jobs: int = -1


def register() -> None:
    """Make these plugins known to Hydra in this process (its scan does not see an editable install's), and store
    the launchers' configs over those of Hydra's plugins, whose keys and defaults they keep. Hydra's plugin scan
    (:meth:`Plugins.instance`, once per process) runs first, so that what it stores does not come after; worker
    processes are handed this process's ConfigStore by the launchers."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    plugins, store = Plugins.instance(), ConfigStore.instance()
    plugins.register(SaneSweeper)
    plugins.register(JoblibLauncher)
    store.store(group="hydra/launcher", name="joblib", node=JoblibConf, provider="sane_run")
    if _Local is not None:
        from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

        for clazz, base, name in ((SubmititLocalLauncher, LocalQueueConf, "submitit_local"),
                                  (SubmititSlurmLauncher, SlurmQueueConf, "submitit_slurm")):  # fmt: skip
            plugins.register(clazz)
            node = make_dataclass(f"Sane{base.__name__}", [("_target_", str, f"{__name__}.{clazz.__name__}")],
                                  bases=(base,))  # fmt: skip
            store.store(group="hydra/launcher", name=name, node=node, provider="sane_run")
