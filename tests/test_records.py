"""The run-folder format: read back what was written, and clear errors on corrupt folders."""

from __future__ import annotations

import json
import re

import pytest
from helpers import make_config

from sane_cli.errors import UsageError
from sane_cli.records import find_runs, load_run
from sane_cli.tables import collect, summary_table
from sane_cli.training import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    for name in ("a", "b"):
        train(make_config(f"seed={ord(name)}"), root / "sweep" / name)
    return root


def test_find_and_read(runs):
    paths = find_runs(runs)
    assert [p.name for p in paths] == ["a", "b"]
    run = load_run(paths[0])
    assert run.summary["final_step"] == 20 == run.metrics.step.iloc[-1]
    assert run.summary["final_lambda_max"] == pytest.approx(run.hessian.lambda_max.iloc[-1])
    table = summary_table(collect([runs])[0])
    assert len(table) == 2 and set(table.status) == {"completed"}
    assert table.sane.tolist() == pytest.approx([load_run(p).hessian.sane.iloc[-1] for p in paths])


def cut(file, before: str) -> None:
    """Cut the file inside its last row, just before the last ``before`` (as a full disk or a kill can)."""
    text = file.read_text()
    file.write_text(text[: text.rindex(before)])


def replace_last(file, old: str, new: str) -> None:
    text = file.read_bytes().decode()  # as written: csv rows end in \r\n
    i = text.rindex(old)
    file.write_bytes((text[:i] + new + text[i + len(old) :]).encode())


def edit_summary(folder, **changes) -> None:
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, **changes}))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: (d / "summary.json").write_text("{not json"), "summary.json is missing or corrupt"),
        (lambda d: (d / "summary.json").write_text(json.dumps({"status": "odd"})), "lacks a valid status"),
        (lambda d: (d / "metrics.csv").unlink(), "metrics.csv is missing or corrupt"),
        # bytes that are not text at all (a disk error, a binary written over the file)
        (lambda d: (d / "summary.json").write_bytes(bytes(range(128, 256))), "summary.json is missing or corrupt"),
        (lambda d: (d / "layers.csv").write_bytes(bytes(range(128, 256))), "layers.csv is missing or corrupt"),
        (lambda d: (d / "hessian.csv").write_text("step,lr\n0,0.1\n"), "hessian.csv has columns"),
        (lambda d: cut(d / "hessian.csv", ",kind"), r"hessian.csv: the last row is cut off"),
        (lambda d: cut(d / "loss.csv", "."), r"loss.csv: the last row is cut off"),
        (lambda d: replace_last(d / "metrics.csv", "0.1\r\n", "fast\r\n"), r"metrics.csv: row 5 has lr='fast', not a"),
        (lambda d: replace_last(d / "hessian.csv", "scheduled", "sched"), r"row 3 has kind='sched'"),
        (lambda d: (d / "summary.json").write_text("[1, 2]"), "lacks a valid status and config"),
        (lambda d: edit_summary(d, config="lr=0.1"), "lacks a valid status and config"),
        (lambda d: edit_summary(d, final_sane="33.6"), r"non-numeric final_sane \('33.6'\)"),
    ],
)
def test_corrupt_folders_are_named(tmp_path, damage, message):
    train(make_config(), tmp_path / "run")
    damage(tmp_path / "run")
    with pytest.raises(UsageError, match=message) as info:
        load_run(tmp_path / "run")
    assert str(tmp_path / "run") in str(info.value)
    # the report skips it with a warning, and fails only when nothing readable is left
    with pytest.raises(UsageError, match="no readable run folders"):
        collect([tmp_path])
    train(make_config(), tmp_path / "good")
    runs, skipped = collect([tmp_path])
    assert [r.path for r in runs] == [tmp_path / "good"] and str(tmp_path / "run") in skipped[0]


def test_interrupted_run_is_recorded(tmp_path, monkeypatch):
    import sane_cli.training as training

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "measure", stop)
    with pytest.raises(KeyboardInterrupt):
        train(make_config(), tmp_path / "run")
    assert load_run(tmp_path / "run").status == "interrupted"


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A full disk while a spectrum is written: the run fails with its record, and neither a part of the
    file, nor a temporary, nor a hessian.csv row without its spectrum is left."""
    import sane_cli.records.writer as records

    real = records.np.savez

    def full_disk(file, **arrays):
        if "step_10" in getattr(file, "name", ""):
            file.write(b"PK\x03\x04 half a file")
            raise OSError(28, "No space left on device")
        return real(file, **arrays)

    monkeypatch.setattr(records.np, "savez", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(make_config(), tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.status == "failed" and "No space left" in run.summary["error"]
    assert sorted(p.name for p in (tmp_path / "run").rglob("*") if p.is_file() and "tmp" in p.name) == []
    assert run.spectrum_steps() == run.hessian.step.tolist() == [0]


def test_summary_json_is_strict_json_for_a_diverged_run(tmp_path):
    train(make_config("lr=1e6", "max_loss=1e300", "steps=200"), tmp_path / "run")  # on until the loss is not finite

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    summary = json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=refuse)
    assert summary["status"] == "diverged" and summary["final_train_loss"] is None
    assert summary_table(collect([tmp_path])[0]).train_loss.isna().all()


def test_a_run_folder_is_claimed_whole_and_only_once(tmp_path):
    """summary.json appears with its first content in one step (a kill right after the claim leaves a
    readable, resumable record), and a second writer into the same folder is refused."""
    from sane_cli.records import RunWriter

    writer = RunWriter.create(tmp_path / "run", summary={"status": "running", "config": {"seed": 3}})
    try:
        assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {
            "status": "running",
            "config": {"seed": 3},
        }
        with pytest.raises(UsageError, match="already holds a run"):
            RunWriter.create(tmp_path / "run")
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [  # with the room kept for the last summary
            ".summary.reserve", "hessian.csv", "layers.csv", "loss.csv", "metrics.csv", "spectra", "summary.json"
        ]  # fmt: skip
        assert (tmp_path / "run" / ".summary.reserve").stat().st_size == 256 * 1024
    finally:
        writer.close()
    assert not (tmp_path / "run" / ".summary.reserve").exists()  # given back when the run ends


def test_negative_counts_of_earlier_versions(tmp_path):
    """Folders written before n_negative_se and negative_below (0.14 and earlier) are read in today's columns:
    an exact count kept (its standard error 0, its threshold unknown), slq's count of Gauss nodes below 0 (which
    had no resolution) left empty, in hessian.csv and layers.csv alike."""
    import pandas as pd

    for method in ("exact", "slq"):
        folder = tmp_path / method
        train(make_config(f"hessian={method}", "hessian.layers=true", "hessian.exact_max_params=1"), folder)
        now = load_run(folder)
        for name in ("hessian.csv", "layers.csv"):
            table = pd.read_csv(folder / name).drop(columns=["n_negative_se", "negative_below"])
            table.to_csv(folder / name, index=False)
        old = load_run(folder)
        for new, before in ((now.hessian, old.hessian), (now.layers, old.layers)):
            assert list(before.columns) == list(new.columns) and before.negative_below.isna().all()
            estimated = before.method != "exact"
            assert estimated.any() == (method == "slq")
            assert before.n_negative[estimated].isna().all() and before.n_negative_se[estimated].isna().all()
            assert before.n_negative[~estimated].tolist() == new.n_negative[~estimated].tolist()
            assert (before.n_negative_se[~estimated] == 0).all()


def _no_space(*_args, **_kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["reserve", "claim"])
def test_a_disk_too_full_to_claim_a_folder_leaves_nothing(tmp_path, monkeypatch, where):
    """No room for the record a run keeps (its reserve) or for its claim: one line naming the room, and the
    folder holds nothing of the run (no summary.json, no reserve, no temporary)."""
    import sane_cli.records.writer as writer

    if where == "reserve":
        monkeypatch.setattr(writer, "reserve_room", _no_space)
    else:
        monkeypatch.setattr(writer, "summary_text", _no_space)
    with pytest.raises(UsageError, match=r"no room for a run in .*run: \d+ KiB free on its disk"):
        train(make_config(), tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []


@pytest.mark.parametrize("where", ["opening", "hydra files"])
def test_a_disk_full_just_after_the_claim_records_the_failure(tmp_path, monkeypatch, where):
    """The disk fills between the claim and the first step (as the CSVs are opened, or sane-run's .hydra
    files are written): summary.json says failed, with the error, not running."""
    import sane_cli.records.writer as writer

    on_claimed = None
    if where == "opening":
        monkeypatch.setattr(writer, "CsvLog", _no_space)
    else:
        on_claimed = _no_space
    with pytest.raises(OSError, match="No space left"):
        train(make_config(), tmp_path / "run", on_claimed=on_claimed)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]
    assert not (tmp_path / "run" / ".summary.reserve").exists()


def test_layer_rows_and_config_groups_that_do_not_match_the_run(tmp_path):
    """layers.csv is checked against hessian.csv (a checkpoint's rows missing, a checkpoint hessian.csv lacks, a
    layer short), rows after the last checkpoint (a write a stop cut short) are left out, and a config group that
    is not a mapping is named: each a one-line error naming the file, not a report built on it."""
    import shutil

    import pandas as pd

    good = tmp_path / "good"
    train(make_config("hessian.layers=true"), good)
    rows = pd.read_csv(good / "layers.csv")
    assert sorted(set(rows.step)) == [0, 10, 20] and rows.layer.nunique() == 2

    def damaged(name, change):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        change(folder)
        return folder

    def write(table):
        return lambda d: table.to_csv(d / "layers.csv", index=False)

    late = pd.concat([rows, rows.iloc[-2:].assign(step=30)])  # a checkpoint a stop cut short: left out
    assert 30 not in load_run(damaged("late", write(late))).layers.step.tolist()
    cases = {
        "rows of a checkpoint at step -5": write(pd.concat([rows, rows.iloc[-1:].assign(step=-5)])),
        "rows of a checkpoint at step 30 \\(scheduled\\).*": write(
            pd.concat([rows, rows.iloc[-1:].assign(step=30), rows.iloc[-1:].assign(step=40)])),
        "the last row has 7 fields, the header 21": lambda d: (d / "layers.csv").write_text(
            (good / "layers.csv").read_text() + "20,scheduled,2,2,Linear,18,exa\n"),
        "no rows of the checkpoint at step 20 \\(scheduled\\)": write(rows[rows.step != 20]),
        "rows of a checkpoint at step 5 \\(scheduled\\) that hessian.csv does not have": write(
            pd.concat([rows.iloc[:2].assign(step=5), rows])),
        "the checkpoint at step 10 \\(scheduled\\) has layers \\[1\\]": write(
            rows[(rows.step != 10) | (rows.layer == 1)]),
        **{re.escape(f"config has hessian = {v!r}, not a mapping"): (lambda d, v=v: edit_summary(d, config={
            **json.loads((d / "summary.json").read_text())["config"], "hessian": v})) for v in ([], "x", 5, None)},
    }  # fmt: skip
    for i, (message, change) in enumerate(cases.items()):
        with pytest.raises(UsageError, match=message):
            load_run(damaged(f"case{i}", change))
