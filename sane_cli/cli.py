"""Command-line entry points: they compose and check the config, then call plain functions.

``sane-run``    Hydra app around :func:`sane_cli.training.train` (single runs and ``-m`` sweeps).
``sane-report`` figures, tables and report.html for every run below the given folders
                (:func:`sane_cli.report.report`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import sys
import tempfile
from importlib import resources
from pathlib import Path

from . import stops
from .errors import UsageError

# torch, Hydra and the training code are imported where used, so that `sane-report` starts quickly
CONFIG_MODULE = "sane_cli.conf"
GROUPS = ("dataset", "model", "optim", "hessian", "logger", "experiment")


NAME_MAX = 200  # bytes of a folder name made from overrides (file systems allow 255)


def short_name(name: str) -> str:
    """``name`` as a folder name a file system can hold: as it is up to NAME_MAX bytes, else cut there, with
    a hash of the whole name to keep it apart (the ``sane_short`` resolver of the sweep's job folders).

    >>> short_name("lr=0.1,seed=0")
    'lr=0.1,seed=0'
    """
    data = name.encode()
    if len(data) <= NAME_MAX:
        return name
    import hashlib

    cut = data[: NAME_MAX - 12].decode(errors="ignore")
    return f"{cut}~{hashlib.sha1(data).hexdigest()[:10]}"


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("sane_short", short_name, replace=True)


def _usage_exit(prog: str, err: UsageError) -> None:
    print(f"{prog}: error: {err}", file=sys.stderr)
    sys.exit(2)


def _hydra_app():
    """The Hydra application behind ``sane-run``: compose the config, train one run in Hydra's folder.

    A job whose folder already holds a run (``resume=<folder>``, or a sweep started again with the same
    ``hydra.sweep.dir``) continues it from its checkpoint, or skips it when it has ended (completed or
    diverged). The ``.hydra/`` files are written here, for new runs only (``hydra.output_subdir`` is null), so
    that a run's record of how it was started is never replaced."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    _register_resolvers()
    from hydra_plugins.sane_run import register

    register()  # the sweeper and launchers, also where Hydra's plugin scan does not see them (an editable install)

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
    def app(cfg: DictConfig) -> dict[str, str] | None:
        """One run; in a sweep, the job's outcome (:func:`sane_cli.sweeps.outcome`) rather than an exit, so that
        a job that fails, or is stopped alone, leaves the others to run."""
        from . import distributed
        from .records import status_of
        from .sweeps import outcome

        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        stops.job["dir"] = run_dir
        if stops.in_sweep_worker():
            stops.guard_worker()
        try:
            ran = _job(cfg, hydra_cfg, run_dir, multirun)
            return outcome(run_dir, status_of(run_dir) or "not run") if ran is None else ran
        except UsageError as e:  # to stderr only: the folder may be another run's, whose run.log is its own
            stops.remove_unclaimed(run_dir)
            if not multirun:
                _usage_exit("sane-run", e)
            print(f"sane-run: error: {e}", file=sys.stderr, flush=True)
            return _failed(hydra_cfg, run_dir, str(e), "refused")
        except KeyboardInterrupt as e:
            alone = multirun and not _runs_in_sweep_process(hydra_cfg)  # a job stopped alone: the others go on
            signum = int(getattr(e, "signum", signal.SIGINT))
            if getattr(e, "step", None) is None:  # before training started
                stops.remove_unclaimed(run_dir)
                stops.end_job(128 + signum)
                if alone:
                    stops.say(f"sane-run: stopped by {signal.Signals(signum).name} before training started")
                    return outcome(run_dir, "not run", f"stopped by {signal.Signals(signum).name} before it started")
                raise
            # one line, and the shell's code for a death by that signal (submitit reads it)
            again = _again(run_dir, hydra_cfg, multirun)
            stops.say(f"sane-run: stopped by {e} at step {e.step}; {run_dir} keeps all it logged (continue: {again})")
            stops.end_job(128 + signum)  # a worker whose sweep was stopped takes no further job
            if alone:
                return outcome(run_dir, "interrupted", f"stopped by {e} at step {e.step}")
            sys.exit(128 + signum)
        except distributed.RankLost as e:  # another rank of a data-parallel job stopped: resumable
            again = _again(run_dir, hydra_cfg, multirun)
            stops.say(f"sane-run: stopped: {e}; {run_dir} keeps all it logged (continue: {again})")
            sys.exit(1)
        except Exception as e:  # one line; the traceback is in summary.json where the run got that far
            recorded = status_of(run_dir) == "failed"
            where = f"{run_dir}/summary.json records it, with the traceback" if recorded else f"in {run_dir}"
            print(f"sane-run: error: the run failed ({type(e).__name__}: {e}); {where}", file=sys.stderr, flush=True)
            if not multirun or distributed.current().in_job:  # a data-parallel job's failure ends its sweep
                sys.exit(1)
            return _failed(hydra_cfg, run_dir, f"{type(e).__name__}: {e}".splitlines()[0])
        finally:
            stops.job["dir"] = None  # between jobs

    return app


def _again(run_dir: Path, hydra_cfg, multirun: bool) -> str:
    """How to continue a stopped run: its resume command, or a sweep's command with its hydra.sweep.dir."""
    if multirun:
        return "run the sweep again with " + shell_quote("hydra.sweep.dir=" + hydra_quote(str(hydra_cfg.sweep.dir)))
    return continue_command(run_dir)


def _job(cfg, hydra_cfg, run_dir: Path, multirun: bool) -> dict[str, str] | None:
    """Train the job in ``run_dir``: a new run, a stopped one continued, or none (an ended run there, a sweep
    stopped at a failure: that outcome is returned). None once trained."""
    from .records import is_run_dir
    from .sweeps import outcome, stopped_by_failure
    from .training import train

    # a folder inside a run folder, however it was named (an interpolated hydra.run.dir, a sweep's job): that run's
    # files are its record (the literal paths were refused before Hydra started)
    inside = next((p for p in run_dir.absolute().parents if is_run_dir(p)), None)
    if inside is not None:
        if multirun:  # the sweep's folder too, made inside that run's
            stops.remove_unclaimed_sweep(Path(hydra_cfg.sweep.dir), inside)
        raise UsageError(
            f"the run folder {run_dir} lies inside the run folder {inside}; its files are that run's record: "
            "choose a folder outside it (hydra.run.dir, hydra.sweep.dir)"
        )
    resume = _existing_run(cfg, run_dir, list(hydra_cfg.overrides.task), multirun, hydra_cfg)
    if isinstance(resume, dict):  # an ended run there (or one not to be run again): its outcome
        return resume
    failed = stopped_by_failure(Path(hydra_cfg.sweep.dir)) if multirun else None
    if failed is not None:  # hydra.sweeper.stop_on_failure: a job failed before this one started
        stops.remove_unclaimed(run_dir)
        return outcome(run_dir, "not run", f"the sweep stopped at the failure of {failed} (stop_on_failure)")
    if resume is not False:
        cfg = resume
    _set_threads(cfg.get("threads"), hydra_cfg.launcher)
    composed = cfg
    train(cfg, run_dir, resume=resume is not False, on_claimed=lambda: _save_hydra_files(run_dir, composed))
    return None


SWEEPER_FLAGS = ("stop_on_failure", "retry_failed")  # hydra.sweeper's switches (conf/hydra/sweeper/sane.yaml)


def sweeper_flag(hydra_cfg, key: str) -> bool:
    """``hydra.sweeper.<key>``: true only where it is the boolean true (precheck refuses any other word)."""
    return hydra_cfg.sweeper.get(key, False) is True


def _runs_in_sweep_process(hydra_cfg) -> bool:
    """Whether the jobs of this sweep run in the sweep's own process, one after another (Hydra's basic launcher):
    a signal there stops the sweep, not one job."""
    from .sweeps import in_sweep_process

    return in_sweep_process() or str(hydra_cfg.launcher.get("_target_", "")).endswith(".BasicLauncher")


def _failed(hydra_cfg, run_dir: Path, line: str, status: str = "failed") -> dict[str, str]:
    """A failed (or refused) job's outcome; with ``hydra.sweeper.stop_on_failure``, the jobs that start after it do
    not run."""
    from .sweeps import mark_stop, outcome

    if sweeper_flag(hydra_cfg, "stop_on_failure"):
        mark_stop(Path(hydra_cfg.sweep.dir), run_dir)
    return outcome(run_dir, status, line)


def _top_key(override: str) -> str:
    """The top-level config key an override sets: ``logger`` of ``logger.dir=x``, ``+logger.dir=x``, ``~logger``."""
    return override.split("=", 1)[0].lstrip("+~").split(".")[0]


def _existing_run(cfg, run_dir: Path, overrides: list[str], multirun: bool, hydra_cfg=None):
    """What to do in ``run_dir``: False, start a new run; an outcome (:func:`sane_cli.sweeps.outcome`), nothing
    (a sweep started again: the job's run there has ended, or failed and ``hydra.sweeper.retry_failed`` is not
    set); otherwise the config to resume the run there with: its own, with ``threads`` and ``device`` from this
    command line (``resume=<folder>``), or the composed one (a sweep started again, checked to be the same)."""
    from omegaconf import OmegaConf, open_dict

    from .config import validate
    from .records import (
        ENDED,
        MAY_DIFFER,
        as_it_ran,
        config_value,
        first_difference,
        is_run_dir,
        read_summary,
        resume_point,
        status_of,
    )

    if cfg.get("resume") is None and not is_run_dir(run_dir):
        return False
    if cfg.get("resume") is None and not multirun:  # claimed since precheck looked: by a run started with this one
        raise UsageError(f"{run_dir} already holds a run (summary.json); choose another folder (hydra.run.dir)")
    if cfg.get("resume") is None:  # a sweep started again into the same hydra.sweep.dir
        from .sweeps import outcome

        status = status_of(run_dir)
        if status in ENDED:  # its files untouched, its run.log too
            stored = as_it_ran(read_summary(run_dir)["config"])
            now = OmegaConf.to_container(validate(cfg.copy()), resolve=True)
            key = first_difference(now, stored)
            if key is not None:
                other = f"{key}: {config_value(stored, key)!r} there, {config_value(now, key)!r} now"
                print(f"sane-run: {run_dir} holds a {status} run of another config ({other}); skipped, not run: give "
                      "this sweep another hydra.sweep.dir", file=sys.stderr, flush=True)  # fmt: skip
                return outcome(run_dir, "refused", f"it holds a {status} run of another config ({other}): use "
                               "another hydra.sweep.dir")  # fmt: skip
            print(f"sane-run: {run_dir} already holds a {status} run; skipped", flush=True)
            return outcome(run_dir, status)
        if status == "failed" and not (hydra_cfg is not None and sweeper_flag(hydra_cfg, "retry_failed")):
            error = read_summary(run_dir).get("error") or "an error"
            print(f"sane-run: {run_dir} holds a run that failed ({error}); not retried (retry it with "
                  "hydra.sweeper.retry_failed=true)", file=sys.stderr, flush=True)  # fmt: skip
            return outcome(run_dir, "failed", f"{error} (an earlier start's; not retried)")
        return cfg  # train(resume=True) checks that the run there has this job's config
    # resume=<folder>: checked before Hydra started (precheck); the config its checkpoint.pt was trained with
    stored = OmegaConf.create(resume_point(run_dir).summary["config"])
    given = {_top_key(o) for o in overrides}
    with open_dict(stored):
        for key in MAY_DIFFER:
            if key in given and key != "resume":
                stored[key] = cfg[key]
        stored.resume = cfg.resume
    return stored


def _save_hydra_files(run_dir: Path, cfg) -> None:
    """.hydra/config.yaml (the composed config), hydra.yaml and overrides.yaml, as Hydra writes them."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.instance().cfg
    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (folder / "hydra.yaml").write_text(OmegaConf.to_yaml(hydra_cfg))
    (folder / "overrides.yaml").write_text(OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))


def _set_threads(threads: int | None, launcher) -> None:
    """CPU threads for this run: ``threads``, or else the cores this process may use
    (:func:`sane_cli.devices.usable_cores`: its CPU affinity and cgroup quota, a SLURM job's allocation) given to
    the launcher's jobs: a submitit job's ``cpus_per_task``, a share among the ranks of a data-parallel job on this
    machine (torchrun's ``--nproc_per_node``), a share of joblib's ``n_jobs`` parallel jobs (-1: one job per core),
    so that jobs x threads <= cores. Set for torch and for every BLAS in the process (scipy's too,
    behind the eigenvector solver), so that a run's numbers depend on its thread count alone, not on the launcher
    that ran it."""
    import torch
    from threadpoolctl import threadpool_limits

    from . import distributed
    from .devices import usable_cores

    if threads is None:
        cores = usable_cores()
        if launcher.get("cpus_per_task"):
            threads = min(int(launcher.cpus_per_task), cores)
        elif distributed.current().size > 1:  # the ranks of a data-parallel job (torchrun) share their machine's cores
            threads = max(1, cores // distributed.current().local_size)
        else:
            from .sweeps import workers

            threads = max(1, cores // workers(int(launcher.get("n_jobs", 1) or 1), cores))
    torch.set_num_threads(int(threads))
    threadpool_limits(limits=int(threads))


LAUNCHERS = {  # hydra/launcher options: the plugin package each needs, and the extra that installs it
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "parallel"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
}


def _check_launcher(name: str) -> None:
    """``hydra/launcher=<name>``: a launcher this package knows, with its plugin installed; none but the basic one
    in a data-parallel job (started by torchrun), whose ranks run the sweep's jobs together, one after another."""
    import importlib.util

    from . import distributed

    if name != "basic" and distributed.launched():
        raise UsageError(f"hydra/launcher={name} cannot start jobs from a data-parallel job (torchrun): its ranks run "
                         "a sweep's jobs one after another; drop hydra/launcher, or start the sweep without torchrun "
                         "with hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=<ranks>")  # fmt: skip

    if name == "basic":
        return
    if name not in LAUNCHERS:
        raise UsageError(f"hydra/launcher={name} is unknown; choose one of basic, {', '.join(LAUNCHERS)}")
    module, extra = LAUNCHERS[name]
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"hydra/launcher={name} needs its Hydra plugin: pip install 'sane-run[{extra}]'")
    if name in ("slurm", "submitit_slurm"):
        import shutil

        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
        if missing:
            raise UsageError(
                f"hydra/launcher={name} needs SLURM's commands ({', '.join(missing)} not found on PATH): start the "
                "sweep on the cluster's login node, or use hydra/launcher=joblib on this machine"
            )


def group_options(group: str) -> list[str]:
    """The option names of a config group, from the installed config files."""
    folder = resources.files(CONFIG_MODULE) / group
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


CONFIG_OPTIONS = {"--config-dir": "dir", "-cd": "dir", "--config-name": "name", "-cn": "name",
                  "--config-path": "path", "-cp": "path"}  # fmt: skip


def config_options(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Hydra's config-folder options split from the rest of ``argv``: ``--config-dir``/``-cd`` (a folder of the
    user's configs, searched before the packaged ones), ``--config-name``/``-cn`` (the primary config),
    ``--config-path``/``-cp`` (in place of the packaged folder), each as ``--option VALUE`` or ``--option=VALUE``.

    >>> config_options(["-m", "--config-dir", "mine", "lr=0.1", "-cn=study"])
    (['-m', 'lr=0.1'], {'dir': 'mine', 'name': 'study'})
    """
    rest, options, words = [], {}, iter(argv)
    for word in words:
        flag, eq, value = word.partition("=")
        if flag in CONFIG_OPTIONS:
            value = value if eq else next(words, None)
            if not value:
                raise UsageError(f"{flag} needs a value: {flag} <{CONFIG_OPTIONS[flag]}>")
            options[CONFIG_OPTIONS[flag]] = value
        else:
            rest.append(word)
    return rest, options


@contextlib.contextmanager
def composing(options: dict[str, str]):
    """Hydra's compose API with the config search path ``sane-run`` itself will use: the packaged configs (or
    ``--config-path``'s) and the ``--config-dir`` folder before them (``hydra.searchpath`` is an override, given
    to each call); yields the config loader (for a group's options)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import compute_search_path_dir, create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    main = f"pkg://{CONFIG_MODULE}"
    if "path" in options:
        main = compute_search_path_dir(__file__, None, options["path"])
        folder = main.removeprefix("file://")
        if "://" not in folder and not Path(folder).is_dir():
            raise UsageError(f"--config-path {options['path']} is not a folder; it replaces the packaged configs (to "
                             "add yours beside them, use --config-dir)")  # fmt: skip
    search_path = create_config_search_path(main)
    if "dir" in options:
        folder = Path(options["dir"]).expanduser().absolute()
        if not folder.is_dir():
            raise UsageError(f"--config-dir {options['dir']} is not a folder; give the folder of your config files")
        search_path.prepend(provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema"))
    from hydra_plugins.sane_run import register

    register()  # the sweeper's and launchers' configs, as the app will compose them
    if GlobalHydra.instance().is_initialized():
        raise RuntimeError("Hydra is initialised already")  # the app is not running yet when precheck is called
    hydra = Hydra.create_main_hydra2(task_name="sane-run", config_search_path=search_path)
    try:
        yield hydra.config_loader
    finally:
        GlobalHydra.instance().clear()


def precheck(argv: list[str]) -> None:
    """Validate every job a command line asks for, before any of them starts.

    Each combination of sweep values is composed with Hydra's compose API and checked by
    :func:`sane_cli.config.validate`, and against the sizes of its data and model (known without loading the
    one or allocating the other), so that a bad value in the last job of a sweep stops the sweep before the
    first job runs. Words Hydra cannot parse and keys the config lacks are reported in one line too.

    Raises:
        UsageError: the first bad value.
    """
    from hydra import compose
    from hydra.core.object_type import ObjectType
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .checks import path_fits
    from .config import check_against_data, validate
    from .data import check_files, dataset_sizes
    from .devices import resolve_device
    from .models import sized_model
    from .records import is_run_dir

    argv, options = config_options(argv)
    words = [a for a in argv if not a.startswith("-")]
    multirun = _sweep(argv)
    for word in words:
        if word.startswith(("hydra.run.dir=", "hydra.sweep.dir=", "hydra.sweep.subdir=", "resume=")):
            path_fits(word_value(word).split("${", 1)[0], word.split("=", 1)[0])
        key, _, value = word.partition("=")
        if key in (f"hydra.sweeper.{k}" for k in SWEEPER_FLAGS) and value not in ("true", "false"):
            raise UsageError(f"{key}={value} is invalid: must be true or false")
        if key == "hydra.launcher.n_jobs" and not re.fullmatch(r"-?[1-9][0-9]*", value):
            raise UsageError(f"{key}={value} is invalid: must be a whole number of jobs at a time, not 0 (-1: one per "
                             "core, -2: all cores but one)")  # fmt: skip
        if word.split("=", 1)[0].lstrip("+~") == "hydra.output_subdir":
            raise UsageError(
                "hydra.output_subdir cannot be set: sane-run writes each run's .hydra/ files itself, for new runs "
                "only, so that a run's record of how it started is never written over (a sweep started again)"
            )
    if any(w.startswith("resume=") for w in words):
        _check_resume(words, multirun)
        return
    for word in words:  # a named run folder that holds a run is refused before Hydra writes .hydra/ into it
        if word.startswith("hydra.run.dir=") and not multirun:
            folder = Path(word_value(word)).expanduser()
            if is_run_dir(folder):
                raise UsageError(
                    f"hydra.run.dir={folder} already holds a run (summary.json); choose another folder, or continue "
                    f"a stopped run with {continue_command(folder)}"
                )
        if word.startswith(("hydra.run.dir=", "hydra.sweep.dir=")):  # nor is a folder inside a run folder
            folder = Path(word_value(word)).expanduser().absolute()
            inside = next((p for p in folder.parents if is_run_dir(p)), None)
            if multirun and word.startswith("hydra.sweep.dir=") and is_run_dir(folder):
                inside = folder
            if inside is not None:
                raise UsageError(
                    f"{word.split('=', 1)[0]}={folder} lies inside the run folder {inside}; its files are that "
                    "run's record: choose a folder outside it"
                )
    _check_writable(words, multirun)
    parser, overrides = OverridesParser.create(), []
    for word in words:  # one at a time, to name the word that does not parse
        try:
            overrides += parser.parse_overrides([word])
        except HydraException as e:
            reason = str(e).strip().splitlines()[0]
            raise UsageError(
                f"{word!r} is not a valid override ({reason}); write key=value, key=a,b,c for a sweep "
                "(https://hydra.cc/docs/advanced/override_grammar/basic/)"
            ) from e
    searchpath = [w for w in words if w.split("=", 1)[0].lstrip("+") == "hydra.searchpath"]
    for word in searchpath:  # Hydra only warns of a folder that is not there, and runs without it
        value = OverridesParser.create().parse_overrides([word])[0].value()
        for entry in value if isinstance(value, list) else [value]:
            if str(entry).startswith("file://") and not Path(str(entry).removeprefix("file://")).is_dir():
                raise UsageError(f"hydra.searchpath: {entry} is not a folder; give the folders of your configs")
    name = options.get("name", "config")
    hint = " (--config-path replaces the packaged configs)" if "path" in options else ""
    with composing(options) as loader:
        primaries = [c for c in loader.get_group_options("", ObjectType.CONFIG, overrides=searchpath) if c[0] != "_"]
        if name not in primaries:
            raise UsageError(f"--config-name {name} is unknown; choose one of {', '.join(primaries) or '(none)'}{hint}")
        per_key = []
        for o in overrides:
            key = o.get_key_element()
            if o.key_or_group == "hydra/launcher" and not o.is_delete():
                _check_launcher(o.get_value_element_as_str())
            if key.startswith(("hydra", "+hydra", "~hydra")):
                continue
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            if o.key_or_group in GROUPS and not o.is_delete():
                try:  # the packaged options and those of the user's config folders
                    allowed = loader.get_group_options(o.key_or_group, config_name=name, overrides=searchpath)
                except (HydraException, OmegaConfBaseException) as e:
                    raise UsageError(_compose_error(e)) from e
                if not allowed:
                    raise UsageError(f"{o.key_or_group}={values[0]!r} is unknown: the config search path has no "
                                     f"{o.key_or_group} configs (--config-path replaces the packaged ones; to add "
                                     "yours beside them, use --config-dir)")  # fmt: skip
                for v in values:
                    if v not in allowed:
                        raise UsageError(f"{o.key_or_group}={v!r} is unknown; choose one of {', '.join(allowed)}")
            per_key.append([f"{key}={v}" for v in values])
        for job in itertools.product(*per_key):
            try:
                cfg = compose(name, overrides=[*searchpath, *job])
            except (HydraException, OmegaConfBaseException) as e:
                raise UsageError(_compose_error(e, job) + hint) from e
            cfg = validate(cfg)
            resolve_device(cfg.device)  # device=cuda where there is none: before any job runs
            check_files(cfg.dataset)
            input_shape, n_classes, n_train = dataset_sizes(cfg.dataset)
            model = sized_model(cfg.model, input_shape, n_classes)  # on the meta device where it can be
            check_against_data(cfg, n_train, model, input_shape)


# besides the room a run keeps for its record: its first summary, CSV headers, a spectrum and checkpoint.pt with
# its temporary (a file system's smallest block each; a run of 53 parameters needed 100 KiB beside the reserve)
ROOM_BYTES = 128 * 1024


def _check_writable(words: list[str], multirun: bool) -> None:
    """The folder the run (or sweep) will be written to can be made: its nearest existing parent is a
    writable folder (not a file, not on a read-only file system) on a disk with room for a run to start."""
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = next((word_value(w) for w in reversed(words) if w.startswith(key)), None)
    target = Path(given.split("${", 1)[0] if given else "outputs").expanduser()
    parent = target.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    fix = f"choose another folder with {key}<folder>" if given else "run from a writable folder or set " + key
    if not parent.is_dir():
        raise UsageError(f"cannot write the run to {target}: {parent} is a file, not a folder; {fix}")
    try:  # a folder made and removed: permissions, read-only file systems, /proc, a full disk's inodes
        os.rmdir(tempfile.mkdtemp(prefix=".sane-run-check-", dir=parent))
    except OSError as e:
        raise UsageError(f"cannot write the run to {target}: {parent} is not writable ({e.strerror}); {fix}") from None
    import shutil

    from .records.files import RESERVE_BYTES

    free, needed = shutil.disk_usage(parent).free, RESERVE_BYTES + ROOM_BYTES
    if free < needed:  # a run keeps room for its last record before it starts; below that it could not record
        raise UsageError(
            f"no room for a run in {target}: {free // 1024} KiB free on its disk, a run needs at least "
            f"{needed // 1024} KiB to start; free some space, or {fix}"
        )


def _check_resume(words: list[str], multirun: bool) -> None:
    """``resume=<folder>``: a single stopped run, continued with its own config (``threads`` and ``device``
    may be given; a sweep is continued by starting it again with the same ``hydra.sweep.dir``)."""
    from .records import MAY_DIFFER, resume_point

    if multirun:
        raise UsageError("resume= continues one run; to continue a sweep, run it again with the same hydra.sweep.dir")
    if sum(w.startswith("resume=") for w in words) > 1:
        raise UsageError("resume= is given more than once; continue one run at a time")
    folder = Path(word_value(next(w for w in words if w.startswith("resume=")))).expanduser()
    others = [
        w for w in words if not w.startswith(("resume=", "hydra.verbose", "hydra/job_logging", "hydra/hydra_logging"))
    ]
    extra = [w for w in others if _top_key(w) not in MAY_DIFFER]
    if extra:
        raise UsageError(
            f"{extra[0]!r} cannot be given with resume=: a resumed run keeps its own config (only "
            f"{', '.join(k for k in MAY_DIFFER if k != 'resume')} may change); start a new run to change it"
        )
    if not folder.is_dir():
        raise UsageError(f"resume={folder} is not a folder; give the folder of a stopped run (it holds summary.json)")
    resume_point(folder)


def word_value(word: str) -> str:
    """The value of a ``key=value`` word as a path: as typed, or unquoted where it is in Hydra's quotes
    (``resume='/data/jürgen'``, as :func:`hydra_quote` writes it)."""
    value = word.split("=", 1)[1]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException

        try:
            parsed = OverridesParser.create().parse_overrides([word])[0].value()
        except HydraException:
            return value
        return parsed.replace("\\${", "${") if isinstance(parsed, str) else value
    return value


def hydra_quote(value: str) -> str:
    """``value`` as Hydra's override grammar reads it back as ``value`` itself: as it is where it is a plain
    path (ASCII letters, digits, ``_ / . -``), otherwise quoted, for any path the file system allows
    (non-ASCII, spaces, ``=``, ``,``, quotes, ``${``), which the unquoted grammar refuses or reads as a sweep
    or an interpolation."""
    if re.fullmatch(r"[\w/.-]+", value, re.ASCII):
        return value
    value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)  # backslashes before a quote, or at the end
    return "'" + value.replace("'", "\\'").replace("${", "\\${") + "'"


def continue_command(run_dir: Path) -> str:
    """The shell command that resumes the run in ``run_dir``, quoted for Hydra and for the shell."""
    return f"sane-run {shell_quote('resume=' + hydra_quote(str(run_dir)))}"


def shell_quote(word: str) -> str:
    """``word`` for a POSIX shell: as it is where nothing in it is special, in double quotes where nothing in
    it is special there (a Hydra-quoted path: ``"resume='/data/jürgen'"``), else as :func:`shlex.quote` does."""
    import shlex

    if re.fullmatch(r"[\w@%+=:,./'-]+", word) and "'" not in word:
        return word
    if not re.search(r'[$`"\\!]', word):
        return f'"{word}"'
    return shlex.quote(word)


def resume_argv(argv: list[str]) -> list[str]:
    """``resume=<folder>`` runs in that folder: Hydra is told so (``hydra.run.dir``) and the folder is made
    absolute, so that the run's config records where it came from."""
    out = []
    for a in argv:
        if a.startswith("resume="):
            folder = hydra_quote(str(Path(word_value(a)).expanduser().resolve()))
            out += [f"resume={folder}", f"hydra.run.dir={folder}"]
        else:
            out.append(a)
    return out


def _compose_error(e: Exception, job: tuple[str, ...] = ()) -> str:
    """One line for an override Hydra could not apply: an unknown key names the fix (for a key of a config
    group, the keys that the chosen option has: optim=adam has no momentum)."""
    text = f"{e}\n{e.__cause__ or ''}"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if "is not in struct" in text and lines[0].startswith("Could not override"):
        key = lines[0].split("'")[1]
        group = key.split(".")[0]
        if group in GROUPS and "." in key:
            from hydra import compose
            from hydra.errors import HydraException
            from omegaconf.errors import OmegaConfBaseException

            try:
                chosen = compose("config", overrides=[w for w in job if w.split("=")[0] != key])[group]
            except (HydraException, OmegaConfBaseException):
                chosen = None
            if chosen is not None and "name" in chosen:
                keys = ", ".join(k for k in chosen if k != "name")
                return f"{key} is not a key of {group}={chosen.name} (its keys: {keys}); check `sane-run --cfg job`"
        return (
            f"{key} is not a config key; check its spelling against `sane-run --cfg job`, or add a key of your own "
            f"with +{key}=..."
        )
    return f"the config does not compose: {lines[0] if lines else type(e).__name__}"


def run_main() -> None:
    """``sane-run [overrides]``, ``sane-run -m key=a,b ...``: see the README.

    SIGTERM, Ctrl-C and SIGHUP at any moment end it with one line and the shell's status for that signal (128 + its
    number): during start-up (nothing written, no folder left), or in training (the run records where it
    stopped)."""
    from . import distributed
    from .devices import short_spin

    short_spin()  # before torch is imported
    for sig in stops.STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # a signal the shell told this process to ignore stays so
            signal.signal(sig, stops.stop_at_start)
    status = 0
    try:
        if not distributed.start().main:  # a rank of a data-parallel job (torchrun) other than 0
            sys.exit(_follow())
        _run(sys.argv[1:])
    except KeyboardInterrupt as e:  # before a run folder was claimed
        signum = getattr(e, "signum", signal.SIGINT)
        status = 128 + int(signum)
        stops.say(f"sane-run: stopped by {signal.Signals(signum).name} before training started")
        sys.exit(status)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
        raise
    finally:
        distributed.finish(status)


def _follow() -> int:
    """A rank other than 0 of a data-parallel job: it runs the jobs rank 0 composes and sends, with the same config,
    and says nothing (rank 0 speaks for the job); its exit status."""
    from . import distributed

    try:
        return distributed.follow(prepare=lambda cfg: _set_threads(cfg.get("threads"), {}))
    except KeyboardInterrupt as e:  # a second signal while it stopped
        return 128 + int(getattr(e, "signum", signal.SIGINT))


def _run(argv: list[str]) -> None:
    if not any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc")
               or a.startswith(("--info=", "--cfg=")) for a in argv):  # fmt: skip
        try:
            precheck(argv)
        except UsageError as e:
            _usage_exit("sane-run", e)
        if any(a.startswith("resume=") for a in argv):
            sys.argv[1:] = resume_argv(argv)
        if _sweep(argv):
            _keep_earlier_multirun(argv)
            # first, where Hydra's parser takes it between overrides too (`sane-run depth=2 -m lr=0.1,0.5`)
            sys.argv[1:] = ["-m", *(a for a in sys.argv[1:] if a not in ("-m", "--multirun"))]
    # what fails outside a job (a launcher's submission: SLURM refusing it) reaches here rather than Hydra's
    # printed traceback, and is said in one line
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from .sweeps import account, outcomes

    try:
        _hydra_app()()
    except Exception as e:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        what = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        if isinstance(e, HydraException | OmegaConfBaseException):  # the config (an interpolation), before any job
            _usage_exit("sane-run", UsageError(what))
        stops.say(
            f"sane-run: error: {what}; the runs started before it keep their folders (run the sweep again with "
            "the same hydra.sweep.dir to continue it)"
            if _sweep(argv)
            else f"sane-run: error: {what}"
        )
        sys.exit(1)
    if outcomes:  # a sweep's account: a line per job that did not end, a count, and the exit status
        lines, code = account(outcomes)
        print("\n".join(lines), file=sys.stderr if code else sys.stdout, flush=True)
        sys.exit(code)


def _sweep(argv: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in argv)


def _keep_earlier_multirun(argv: list[str]) -> None:
    """A sweep started again into a ``hydra.sweep.dir`` that holds one: Hydra writes this start's
    multirun.yaml over the earlier one, which the finished jobs there were run by; it is kept first as
    multirun.<k>.yaml (k = 1 for the first start)."""
    import shutil

    given = next((word_value(w) for w in reversed(argv) if w.startswith("hydra.sweep.dir=")), None)
    if given is None:
        return
    earlier = Path(given).expanduser() / "multirun.yaml"
    if earlier.is_file():
        k = 1
        while earlier.with_name(f"multirun.{k}.yaml").exists():
            k += 1
        shutil.copy2(earlier, earlier.with_name(f"multirun.{k}.yaml"))
        print(f"sane-run: {earlier.parent} holds a sweep; its multirun.yaml is kept as multirun.{k}.yaml", flush=True)


def measure_main() -> None:
    """``sane-measure MODEL [KEY=VALUE ...]``: see :mod:`sane_cli.saved`."""
    from .saved import main

    try:
        main(sys.argv[1:])
    except UsageError as e:
        _usage_exit("sane-measure", e)


def report_main() -> None:
    """``sane-report PATH [PATH...]``: see :func:`sane_cli.report.main`."""
    from .report import main

    try:
        main(sys.argv[1:])
    except UsageError as e:
        _usage_exit("sane-report", e)
