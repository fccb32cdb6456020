"""SLQ and Lanczos within a memory budget (sane_cli.budget): probes in groups and float32-kept Lanczos vectors give
the configured run's numbers (to rounding; float32's for the narrower vectors), the plan takes the first of its
fallbacks that fits, a run that fits none is refused before training in one line, and a run whose budget forces a
plan logs it and completes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY, make_config
from test_cli import run
from test_methods import _net_like_operator, problem

from sane_cli import budget
from sane_cli.iterative import hvp_operator, lanczos, slq


def test_probes_in_groups_give_the_quadrature_of_all_at_once():
    """Without deflation, to 1e-12; with it, rounding brings the deflated directions back into the Krylov spaces
    at a level that differs with the order of the sums (one probe's product is not vmapped), which the quadrature
    of a kinked function feels at 1e-5 of its value (measured 1.4e-5 at a = 1e-3), a thousandth of its standard
    error."""
    model, loss_fn, x, y, _ = problem(depth=3, width=8)
    matvec, p = hvp_operator(model, loss_fn, x, y)
    top = lanczos(matvec, p, 5, tol=1e-10)
    for deflate, rel in ((None, 1e-12), ((top.values, top.vectors), 1e-4)):
        whole = slq(matvec, p, probes=6, steps=30, seed=3, deflate=deflate)
        for group in (1, 4):
            parts = slq(matvec, p, probes=6, steps=30, seed=3, deflate=deflate, group=group)
            for a in (None, 0.5, 1e-3):
                f = (lambda t: t) if a is None else (lambda t, a=a: np.abs(t) / (np.abs(t) + a))
                (est, se), (want, _) = parts.trace_of(f), whole.trace_of(f)
                assert est == pytest.approx(want, rel=rel) and abs(est - want) < 1e-3 * se, (group, a)


def test_float32_kept_vectors_keep_float64_accuracy_to_float32_rounding():
    """A float64 run whose Lanczos vectors are kept in float32: the top eigenvalues within 1e-6 of the matrix's,
    SLQ's estimates within 1e-5 of the float64-kept run's, and its bracket still holds the exact value (to
    float32's rounding) on a matrix with a net's kind of spectrum."""
    matvec, ev, _ = _net_like_operator(p=400, seed=1)
    exact = np.sort(ev)[::-1]
    top = lanczos(matvec, 400, 5, tol=1e-10, store=torch.float32)
    np.testing.assert_allclose(top.values, exact[:5], rtol=1e-6)
    a = 0.05
    g = lambda t: t / (t + a)  # noqa: E731
    full = slq(matvec, 400, probes=8, steps=60, seed=0)
    narrow = slq(matvec, 400, probes=8, steps=60, seed=0, store=torch.float32, group=3)
    f = lambda t: g(np.abs(t))  # noqa: E731
    assert narrow.trace_of(f)[0] == pytest.approx(full.trace_of(f)[0], rel=1e-5)
    lower, upper = narrow.bracket_of(g)
    gen = torch.Generator().manual_seed(0)  # the same Rademacher probes slq draws
    v = (torch.randint(0, 2, (8, 400), generator=gen) * 2 - 1).double()
    _, _, q = _net_like_operator(p=400, seed=1)
    exact_mean = float(np.mean(((v.numpy() @ q) ** 2) @ f(ev)))
    assert lower - 1e-5 * abs(exact_mean) <= exact_mean <= upper + 1e-5 * abs(exact_mean), (lower, exact_mean, upper)


def test_the_plan_takes_the_first_fallback_that_fits():
    h = make_config("hessian=slq").hessian
    p, f64 = 1_000_000, torch.float64
    configured = budget.need(h, p, f64, 8, f64, 300, 300)
    assert budget.plan(h, p, f64, configured).changes == ()
    grouped = budget.plan(h, p, f64, configured - 1)
    assert grouped.group == 4 and grouped.store == f64 and grouped.steps == 300
    assert budget.need(h, p, f64, 4, f64, 300, 300) <= configured - 1
    one64 = budget.need(h, p, f64, 1, f64, 300, 300)
    narrow = budget.plan(h, p, f64, one64 - 1)
    assert narrow.store == torch.float32 and narrow.need <= one64 - 1 and narrow.steps == 300
    least = budget.least(h, p, f64)
    fewer = budget.plan(h, p, f64, least + 10 * p * 4)
    assert fewer.group == 1 and fewer.store == torch.float32 and budget.MIN_STEPS <= fewer.steps < 300
    assert any("SLQ steps of 300" in c for c in fewer.changes)
    assert budget.plan(h, p, f64, least - 1) is None
    # a plan's bytes count what the solvers keep: SLQ's vectors, 8 bytes each, steps x probes x P at the most
    assert configured >= 300 * 8 * p * 8


def test_a_gpu_run_keeps_its_vectors_in_the_hosts_memory_before_it_takes_fewer_steps():
    """Where no plan on the device keeps every step (a GPU's memory), one that keeps the vectors in the host's
    memory comes before fewer steps: in the run's dtype where the host holds them, else float32; the device then
    holds the work and one chunk of the kept vectors. Without a host budget (the CPU) fewer steps come next; a
    host too small for any full-length plan leaves fewer steps on the device."""
    h = make_config("hessian=slq").hessian
    p, f64, f32 = 4_000_000, torch.float64, torch.float32
    limit = budget.need(h, p, f64, 1, f32, 300, 300) - 1  # the least full-length plan on the device does not fit
    on_host = budget.need(h, p, f64, 8, f64, 300, 300, host=True)
    assert on_host <= limit  # the premise: the work and a chunk fit where the kept vectors do not
    assert budget.plan(h, p, f64, limit).steps < 300 and not budget.plan(h, p, f64, limit).host
    roomy = budget.plan(h, p, f64, limit, host_limit=2**40)
    assert roomy.host and roomy.steps == 300 and roomy.store == f64 and roomy.group == 8 and roomy.store_device == "cpu"
    assert roomy.host_need == budget.host_need(h, p, f64, 8, f64, 300, 300) >= 300 * 8 * p * 8
    assert (
        "the Lanczos vectors kept in the host's memory" in roomy.changes and "in the host's memory" in roomy.describe()
    )
    tight = budget.plan(h, p, f64, limit, host_limit=budget.host_need(h, p, f64, 1, f32, 300, 300))
    assert tight.host and tight.steps == 300 and tight.store == f32 and tight.group == 1
    small = budget.plan(h, p, f64, limit, host_limit=budget.host_need(h, p, f64, 1, f32, 300, 300) - 1)
    assert not small.host and small.steps < 300
    # the host's budget is given for a GPU alone: on the CPU the host's memory is the device's
    assert budget.host_budget("cpu") is None and budget.host_budget(torch.device("cuda")) > 0
    assert budget.plan(h, p, f64, limit, slq=False, host_limit=2**40).max_iter == 300


def test_what_the_plan_counts_beyond_the_kept_vectors(tmp_path):
    """lanczos's trace counts its probes (the top eigenvalue alone does not); without full reorthogonalisation
    SLQ's two recurrence vectors stay with the arithmetic (nothing for the host to keep); the host's free memory
    is capped by the control group's room (cgroup v2), where it sets a limit."""
    h = make_config("hessian=slq").hessian
    p, f64 = 100_000, torch.float64
    probes = int(h.probes)
    with_trace = budget.need(h, p, f64, probes, f64, 300, 300, slq=False, trace=True)
    alone = budget.need(h, p, f64, probes, f64, 300, 300, slq=False)
    assert with_trace - alone == (probes + 4 * min(probes, 16)) * p * 8
    none = make_config("hessian=slq", "hessian.reorth=none").hessian
    assert budget.host_need(none, p, f64, 8, f64, 300, 300) == 301 * p * 8  # Lanczos's rows alone
    assert budget.need(none, p, f64, 8, f64, 300, 300, host=True) >= 2 * 8 * p * 8  # the recurrence's, on the device
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("400000\n")
    assert budget.cgroup_room(tmp_path) == 600000
    (tmp_path / "memory.max").write_text("max\n")
    assert budget.cgroup_room(tmp_path) is None and budget.cgroup_room(tmp_path / "absent") is None
    assert 0 < budget.free_memory("cpu")


@pytest.mark.parametrize("chunk", [None, 4000])
def test_vectors_kept_in_the_hosts_memory_or_read_in_chunks_give_the_same_numbers(device, chunk, monkeypatch):
    """Lanczos and SLQ with their vectors kept on the host ("cpu") while the products run on ``device`` (a GPU where
    one is: benchmarks/gpu_check.sh), and read a few rows at a time (``chunk`` elements: many chunks a step), give
    the eigenpairs and quadratures of the vectors kept with the arithmetic, to rounding."""
    from sane_cli import iterative

    if chunk:
        monkeypatch.setattr(iterative, "CHUNK", chunk)
    matvec_cpu, ev, _ = _net_like_operator(p=400, seed=2)
    matvec = lambda v: matvec_cpu(v.cpu()).to(v.device)  # noqa: E731
    want = lanczos(matvec, 400, 5, tol=1e-10, device=device)
    for store in (None, torch.float32):
        got = lanczos(matvec, 400, 5, tol=1e-10, device=device, store=store, store_device="cpu", keep_basis=True)
        np.testing.assert_allclose(got.values, want.values, rtol=1e-6 if store else 1e-12)
        assert got.krylov.project(torch.ones(2, 400, dtype=torch.float64, device=device)).device.type == device
    whole = slq(matvec, 400, probes=4, steps=40, seed=1, device=device)
    kept = slq(matvec, 400, probes=4, steps=40, seed=1, device=device, store_device="cpu", group=3)
    f = lambda t: np.abs(t) / (np.abs(t) + 0.05)  # noqa: E731
    assert kept.trace_of(f)[0] == pytest.approx(whole.trace_of(f)[0], rel=1e-10)


def test_a_run_beyond_every_plan_is_refused_before_training(tmp_path):
    out = run(tmp_path, *TINY, "hessian=slq", "hessian.memory_gb=0.000001", "hydra.run.dir=refused")
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("sane-run: error: hessian.method=slq needs at least") and "hessian.memory_gb" in line
    assert not (tmp_path / "refused").exists()


def test_a_run_within_a_small_budget_logs_its_plan_and_completes(tmp_path):
    """The tiny run's SLQ (53 parameters: 20 steps, 8 probes) in a budget that holds 2 probes' float64 vectors:
    it says so once and gives the numbers of the unbounded run."""
    h = make_config("hessian=slq").hessian
    gb = budget.need(h, 53, torch.float64, 2, torch.float64, min(int(h.steps), 53), min(int(h.max_iter), 53))
    bounded = run(tmp_path, *TINY, "hessian=slq", f"hessian.memory_gb={gb / 2**30:.12f}", "hydra.run.dir=bounded")
    free = run(tmp_path, *TINY, "hessian=slq", "hydra.run.dir=free")
    assert bounded.returncode == 0 and free.returncode == 0, bounded.stderr[-2000:]
    log = (tmp_path / "bounded" / "run.log").read_text()
    assert log.count("hessian: the Lanczos vectors of 53 parameters within memory: 2 of the 8 probes at a time") == 1
    import pandas as pd

    a, b = (pd.read_csv(tmp_path / d / "hessian.csv").drop(columns="seconds") for d in ("bounded", "free"))
    pd.testing.assert_frame_equal(a, b, rtol=1e-9)
