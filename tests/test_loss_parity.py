"""tools/loss_parity.py and cosmos_hal.parity: reading every log format, verdicts, plot, exit codes."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest

from conftest import REPO
from cosmos_hal import parity
from cosmos_hal.parity import ParityInputError, compare, format_log_line, parse_log_line, read_run

TOOL = os.path.join(REPO, "tools", "loss_parity.py")
HEADER = "[11-23 10:00:{s:02d}|INFO|projects/cosmos/predict2/callbacks/iter_speed.py:{line}:{func}] "


def fresh_curve(n: int, start: int = 1) -> dict[int, float]:
    """A decaying, noisy loss curve drawn fresh for each test."""
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    return {i: 0.05 + 0.5 * math.exp(-i / (n / 3)) + 0.02 * rng.random() for i in range(start, start + n)}


def write_jsonl(path, losses: dict[int, float], **extra) -> str:
    with open(path, "w") as fh:
        for it, loss in losses.items():
            fh.write(json.dumps({"iteration": it, "loss": loss, "lr": 1e-4, "s_per_it": 0.5, **extra}) + "\n")
    return str(path)


def upstream_lines(losses: dict[int, float], hit_thres: int = 10, every: int = 10, prefix: str = "") -> list[str]:
    """What cosmos-predict2's IterSpeed callback prints for these losses (4 decimals)."""
    out = []
    for it, loss in losses.items():
        if it <= hit_thres:
            out.append(prefix + HEADER.format(s=it % 60, line=51, func="on_training_step_end")
                       + f"Iteration {it}: Hit counter: {it}/{hit_thres} | Loss: {loss:.4f} | Time: 1.{it:02d}s")
        elif it % every == 0 and it > hit_thres + every:
            out.append(prefix + HEADER.format(s=it % 60, line=80, func="every_n_impl")
                       + f"{it} : iter_speed 2.31 seconds per iteration | Loss: {loss:.4f}")
    return out


def close(x: float, y: float, decimals: int) -> bool:
    return abs(x - y) <= 0.5 * 10**-decimals + 1e-12


# --------------------------------------------------------------------------------- formats


def test_format_log_line_round_trips_through_the_parser():
    rec = {"iteration": 37, "loss": 0.0402345678912, "lr": 3.2e-5, "grad_norm": 0.81234, "s_per_it": 1.5,
           "samples_per_s": 10.7, "mem_gb": 33.21, "backend": "cpu", "epoch": 2}
    line = format_log_line(rec)
    assert line.startswith("iter 37 | loss ")
    back = parse_log_line("[rank0]: 2026-11-23 10:00:00 " + line)
    assert back["iteration"] == 37
    assert abs(back["loss"] - rec["loss"]) / rec["loss"] < 1e-8
    assert back["backend"] == "cpu" and back["epoch"] == 2
    assert abs(back["lr"] - rec["lr"]) / rec["lr"] < 1e-4
    assert abs(back["grad_norm"] - rec["grad_norm"]) < 1e-4


def test_format_log_line_names_the_missing_field():
    with pytest.raises(KeyError, match="loss"):
        format_log_line({"iteration": 1})


def test_reads_metrics_jsonl_from_a_run_folder_and_tolerates_a_torn_last_line(tmp_path):
    losses = fresh_curve(30)
    path = write_jsonl(tmp_path / "metrics.jsonl", losses, backend="cpu")
    with open(path, "a") as fh:
        fh.write('{"event": "checkpoint", "iteration": 30}\n{"iteration": 31, "lo')  # no loss / torn
    run = read_run(str(tmp_path))
    assert run.format == "jsonl" and run.label == tmp_path.name
    assert run.losses == losses  # exact: JSON keeps every digit


def test_reads_our_log_between_noise_lines(tmp_path):
    losses = fresh_curve(25)
    lines = ["Loading dataset ... 12 videos", "loss will be printed every step"]
    for it, loss in losses.items():
        lines += [f"some warning about iter {it}", format_log_line({"iteration": it, "loss": loss, "backend": "cpu"})]
    (tmp_path / "train.log").write_text("\n".join(lines) + "\n")
    run = read_run(str(tmp_path / "train.log"))
    assert run.format == "log"
    assert run.iterations == list(losses)
    assert all(abs(run.losses[i] - losses[i]) <= 1e-8 * losses[i] for i in losses)


def test_reads_cosmos_predict2_log_with_hit_counter_and_iter_speed_lines(tmp_path):
    losses = fresh_curve(60)
    lines = [HEADER.format(s=0, line=120, func="train") + "Starting training...",
             HEADER.format(s=0, line=310, func="validate") + "Validating at iteration 40..."]
    lines += upstream_lines(losses)
    lines.insert(7, "Warning: Loss: 9.9 from an unrelated library")  # not an upstream loss message
    (tmp_path / "gpu.log").write_text("\n".join(lines) + "\n")
    run = read_run(str(tmp_path / "gpu.log"))
    assert run.format == "cosmos"
    assert run.iterations == list(range(1, 11)) + [30, 40, 50, 60]
    assert all(close(run.losses[i], losses[i], 4) for i in run.iterations)


def test_reads_ascend_log_with_rank_prefixes_and_picks_a_rank(tmp_path):
    rank0, rank1 = fresh_curve(40), fresh_curve(40)
    lines = ["[default0]:[W compiler_depend.ts] torch_npu warning: HCCL_DETERMINISTIC is set"]
    for r, losses in ((0, rank0), (1, rank1)):
        lines += upstream_lines(losses, prefix=f"[default{r}]:")
    lines += ["[rank1]:\x1b[32m[11-23 10:00:01\x1b[0m|INFO|x.py:80:every_n_impl] 40 : iter_speed 2.00 "
              f"seconds per iteration | Loss: {rank1[40]:.4f}"]
    random.shuffle(lines)  # interleaved as ranks write them; rank-0 order kept by iteration keys
    (tmp_path / "npu.log").write_text("\n".join(lines) + "\n")
    run = read_run(str(tmp_path / "npu.log"))
    assert run.format == "ascend" and run.rank == 0
    assert run.iterations == list(range(1, 11)) + [30, 40]
    assert any("ranks [0, 1]" in n for n in run.notes)
    assert all(close(run.losses[i], rank0[i], 4) for i in run.iterations)
    other = read_run(str(tmp_path / "npu.log"), rank=1)
    assert other.iterations == run.iterations  # the coloured "[rank1]:" line is read too (a repeat of 40)
    assert all(close(other.losses[i], rank1[i], 4) for i in other.iterations)


def test_srun_label_and_loguru_rank_header_are_understood(tmp_path):
    losses = fresh_curve(12)
    lines = [f"{r}: [11-23 10:00:01|[Node0  /1  ][RANK{r}    /2    ][MainProc]| INFO|a.py:51:f] "
             f"Iteration {i}: Hit counter: {i}/20 | Loss: {loss + r:.4f} | Time: 1.00s"
             for i, loss in losses.items() for r in (1, 0)]
    (tmp_path / "srun.log").write_text("\n".join(lines))
    run = read_run(str(tmp_path / "srun.log"), fmt="cosmos")
    assert run.rank == 0 and all(close(run.losses[i], losses[i], 4) for i in losses)


def test_repeated_iterations_keep_the_last_value_and_say_so(tmp_path):
    path = tmp_path / "resumed.jsonl"
    path.write_text('{"iteration": 1, "loss": 0.5}\n{"iteration": 2, "loss": 0.4}\n{"iteration": 2, "loss": 0.3}\n')
    run = read_run(str(path))
    assert run.losses == {1: 0.5, 2: 0.3}
    assert any("more than once" in n for n in run.notes)


# --------------------------------------------------------------------------------- errors


def test_no_loss_lines_error_names_the_file_and_shows_its_first_lines(tmp_path):
    path = tmp_path / "empty_run.log"
    path.write_text("starting the run\nconfig: lr=1e-4\nCUDA out of memory\n")
    with pytest.raises(ParityInputError) as e:
        read_run(str(path))
    assert str(path) in str(e.value) and "no loss lines" in str(e.value)
    assert "CUDA out of memory" in str(e.value)


def test_runs_sharing_no_steps_are_an_error_that_gives_both_ranges(tmp_path):
    a = read_run(write_jsonl(tmp_path / "a.jsonl", fresh_curve(10, start=1)))
    b = read_run(write_jsonl(tmp_path / "b.jsonl", fresh_curve(10, start=100)))
    with pytest.raises(ParityInputError, match=r"share no iterations.*1\.\.10.*100\.\.109"):
        compare(a, b)


def test_a_folder_without_metrics_is_an_error_listing_its_content(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ParityInputError, match="without metrics.jsonl.*checkpoints"):
        read_run(str(tmp_path))


# --------------------------------------------------------------------------------- verdicts


def _runs(tmp_path, la: dict[int, float], lb: dict[int, float]):
    return read_run(write_jsonl(tmp_path / "a.jsonl", la)), read_run(write_jsonl(tmp_path / "b.jsonl", lb))


def test_identical_runs_pass_with_zero_difference(tmp_path):
    losses = fresh_curve(100)
    report = compare(*_runs(tmp_path, losses, dict(losses)), rtol=1e-6, window=10, step_rtol=0.0)
    assert report["verdict"] == "pass"
    assert report["per_step"]["max"] == 0.0 and report["final"]["rel"] == 0.0
    assert report["shared_steps"] == 100


def test_one_step_off_by_1e3_fails_a_step_rtol_of_1e4_and_is_located(tmp_path):
    lb = fresh_curve(100)
    la = dict(lb)
    bad = random.randint(2, 99)
    la[bad] = lb[bad] * (1 + 1e-3)
    report = compare(*_runs(tmp_path, la, lb), rtol=1e-4, window=1, step_rtol=1e-4)
    assert report["verdict"] == "fail"
    assert report["per_step"]["max_at"] == bad
    assert abs(report["per_step"]["max"] - 1e-3) < 1e-9
    assert report["per_step"]["first_over_step_rtol"] == bad
    # With wide windows the single step averages out below rtol; the per-step criterion still fails.
    wide = compare(*_runs(tmp_path, la, lb), rtol=1e-4, window=100, step_rtol=1e-4)
    assert [c["ok"] for c in wide["criteria"]] == [True, False, True]


def test_step_noise_that_averages_out_passes_the_window_rule(tmp_path):
    lb = fresh_curve(100)
    la = {i: v * (1 + (0.01 if i % 2 else -0.01)) for i, v in lb.items()}  # +-1 % alternating
    report = compare(*_runs(tmp_path, la, lb), rtol=5e-3, window=20)
    assert report["verdict"] == "pass", parity.format_report(report)
    assert report["per_step"]["max"] > 9e-3  # each step is 1 % off ...
    assert report["windowed"]["max"] < 5e-3  # ... the window means are not
    strict = compare(*_runs(tmp_path, la, lb), rtol=5e-3, window=20, step_rtol=5e-3)
    assert strict["verdict"] == "fail"


def test_a_steady_offset_fails_the_window_rule(tmp_path):
    lb = fresh_curve(100)
    la = {i: v * 1.01 for i, v in lb.items()}
    report = compare(*_runs(tmp_path, la, lb), rtol=5e-3, window=20)
    assert report["verdict"] == "fail"
    assert abs(report["mean_loss"]["rel"] - 0.01) < 1e-9


def test_nan_never_passes(tmp_path):
    lb = fresh_curve(40)
    la = dict(lb)
    la[17] = math.nan
    report = compare(*_runs(tmp_path, la, lb), rtol=1.0, window=40)
    assert report["verdict"] == "fail"
    assert report["criteria"][-1]["first_failure"] == 17


def test_last_window_always_covers_the_final_steps():
    assert parity.window_bounds(45, 20) == [(0, 20), (20, 40), (25, 45)]
    assert parity.window_bounds(5, 20) == [(0, 5)]
    assert parity.window_bounds(40, 20) == [(0, 20), (20, 40)]


def test_coarse_upstream_logs_warn_when_rounding_exceeds_the_tolerance(tmp_path):
    losses = fresh_curve(30)
    (tmp_path / "up.log").write_text("\n".join(upstream_lines(losses, hit_thres=30)))
    a = read_run(str(tmp_path / "up.log"))
    b = read_run(write_jsonl(tmp_path / "b.jsonl", losses))
    report = compare(a, b, rtol=1e-2, window=5, step_rtol=1e-5)
    assert any("too few digits" in w for w in report["warnings"])


# --------------------------------------------------------------------------------- plot and CLI


def test_plot_is_a_real_png(tmp_path):
    pytest.importorskip("matplotlib")
    from cosmos_hal.parity.plot import write_plot

    lb = fresh_curve(80)
    la = {i: v * (1 + 1e-4 * math.sin(i)) for i, v in lb.items()}
    report = compare(*_runs(tmp_path, la, lb), window=10, step_rtol=1e-3)
    path = write_plot(report, str(tmp_path / "plots" / "parity.png"))
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 10_000
    assert not [f for f in os.listdir(tmp_path / "plots") if f.startswith(".")]  # no temp file left


def cli(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def test_cli_exit_codes_pass_fail_and_bad_input(tmp_path):
    lb = fresh_curve(50)
    a = write_jsonl(tmp_path / "a.jsonl", lb)
    b = write_jsonl(tmp_path / "b.jsonl", lb)
    off = write_jsonl(tmp_path / "off.jsonl", {i: v * 1.02 for i, v in lb.items()})
    far = write_jsonl(tmp_path / "far.jsonl", fresh_curve(5, start=1000))
    ok = cli(a, b, "--no-plot")
    assert ok.returncode == 0 and "verdict: PASS" in ok.stdout, ok.stderr
    bad = cli(off, b, "--no-plot", "--rtol", "1e-2")
    assert bad.returncode == 1 and "verdict: FAIL" in bad.stdout
    none = cli(far, b, "--no-plot")
    assert none.returncode == 2 and "share no iterations" in none.stderr
    missing = cli(tmp_path / "nope.log", b, "--no-plot")
    assert missing.returncode == 2 and "nope.log" in missing.stderr
    one = cli(a, "--no-plot")
    assert one.returncode == 2 and "give two runs" in one.stderr


def test_cli_json_report_and_plot_next_to_a(tmp_path):
    pytest.importorskip("matplotlib")
    lb = fresh_curve(40)
    (tmp_path / "cpu").mkdir()
    write_jsonl(tmp_path / "cpu" / "metrics.jsonl", {i: v * (1 + 2e-5) for i, v in lb.items()})
    (tmp_path / "gpu.log").write_text("\n".join(format_log_line({"iteration": i, "loss": v}) for i, v in lb.items()))
    res = cli(tmp_path / "cpu", tmp_path / "gpu.log", "--json", "--step-rtol", "1e-4")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["verdict"] == "pass" and report["shared_steps"] == 40
    assert report["a"]["format"] == "jsonl" and report["b"]["format"] == "log"
    assert abs(report["per_step"]["max"] - 2e-5) < 1e-7
    assert report["plot"] == str(tmp_path / "cpu" / "loss_parity_cpu_vs_gpu.png")
    assert os.path.getsize(report["plot"]) > 10_000


def test_run_overrides_split_per_backend_and_form_the_train_sh_command():
    per = parity.split_overrides(["lr=1e-4", "gpu:precision=bf16"], ["cpu", "gpu"])
    assert per == {"cpu": ["lr=1e-4"], "gpu": ["lr=1e-4", "precision=bf16"]}
    cmd = parity.train_command(["bash", "train.sh"], "tiny", "cpu", "out/cpu", 7, True, per["cpu"])
    assert cmd == ["bash", "train.sh", "--EXP=tiny", "--backend=cpu", "output_dir=out/cpu", "max_iter=7",
                   "parity=true", "lr=1e-4"]
    with pytest.raises(ParityInputError, match="not key=value"):
        parity.split_overrides(["oops"], ["cpu"])


def _real_trainer() -> str | None:
    """The tiny experiment's name once train.sh is the real launcher (it is a placeholder before)."""
    with open(os.path.join(REPO, "train.sh")) as fh:
        if "Placeholder" in fh.read():
            return None
    try:
        from cosmos_hal.train import experiments
    except ImportError:
        return None
    name = getattr(experiments, "DEFAULT_EXPERIMENT", None)
    return name if name in experiments.names() else None


@pytest.mark.slow
@pytest.mark.skipif(_real_trainer() is None, reason="train.sh is still a placeholder (no training core yet)")
def test_run_twice_on_the_cpu_in_parity_mode_gives_the_same_losses(tmp_path):
    res = cli("--run", _real_trainer(), "--backends", "cpu,cpu", "--steps", 3, "--parity", "--out-root",
              tmp_path / "parity", "--step-rtol", 1e-6, "--window", 1, "--rtol", 1e-6, "--no-plot", cwd=REPO,
              timeout=900)  # two train.sh runs: 70 s on an idle 2-core box, over 120 s on a busy one
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for name in ("cpu", "cpu-2"):
        assert len(read_run(str(tmp_path / "parity" / _real_trainer() / name)).losses) == 3
