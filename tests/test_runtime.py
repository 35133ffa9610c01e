"""Process-wide settings: applied by the ``s2s`` command, opt-in for the Python API; the free-core
probe and the one warning training gives on a busy machine."""

from __future__ import annotations

import ctypes.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seqkit import runtime
from seq2seqkit.runtime import CoreWatch, FreeCores, usable_cores

from conftest import tiny_config

TESTS = Path(__file__).resolve().parent
REPORT = ("import json, os, sys\n"
          "from seq2seqkit import runtime\n"
          "s = runtime.process_settings()\n"
          "print(json.dumps({'settings': s and s.__dict__, 'malloc': runtime._configured,\n"
          "                  'spin': os.environ.get('GOMP_SPINCOUNT'),\n"
          "                  'onednn': os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY')}))\n")
OPENMP_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "ONEDNN_PRIMITIVE_CACHE_CAPACITY",
              "DNNL_PRIMITIVE_CACHE_CAPACITY")


def run_python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter without OpenMP settings in its environment (plus
    ``env``); the JSON it prints last."""
    clean = {k: v for k, v in os.environ.items() if k not in OPENMP_ENV}
    clean["PYTHONPATH"] = os.pathsep.join([str(TESTS), clean.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    from seq2seqkit.config import dump_config

    tmp = tmp_path_factory.mktemp("runtime")
    path = tmp / "tiny.yaml"
    cfg = tiny_config(tmp, max_steps=2, validate_every=2)
    cfg.data.dev_max_examples = 20
    path.write_text(dump_config(cfg))
    return path


def test_more_training_processes_than_cores_are_refused_before_any_starts(tiny_yaml, monkeypatch, capsys):
    """``s2s train --nproc 1000`` on the CPU would have had torchrun start 1,000 processes, each
    holding the data and a model, on 2 cores."""
    import seq2seqkit.cli as cli

    monkeypatch.setattr(cli, "usable_cores", lambda: 2)
    monkeypatch.setattr("seq2seqkit.distributed.launch", lambda *a: pytest.fail("started the processes"))
    assert cli.main(["train", "--nproc", "3", str(tiny_yaml), "training.device=cpu"]) == 2
    assert capsys.readouterr().err == ("s2s: error: --nproc 3: training on the CPU, and this process may use 2 cores; "
                                       "each training process needs one of its own: --nproc 2 at most\n")


def test_the_python_api_leaves_the_process_alone(tiny_yaml):
    """Training and loading through the API change neither malloc nor the OpenMP environment."""
    code = (f"import seq2seqkit\nseq2seqkit.train({str(tiny_yaml)!r})\n"
            f"seq2seqkit.load({str(tiny_yaml.parent / 'model')!r}).translate(['a b'])\n" + REPORT)
    assert run_python(code) == {"settings": None, "malloc": False, "spin": None, "onednn": None}


def test_the_cli_applies_them_before_torch_loads(tiny_yaml):
    code = ("import sys\nfrom seq2seqkit.cli import main\n"
            f"assert main(['-q', 'check-data', *{[str(tiny_yaml.parent / 'train' / f) for f in ('src.txt', 'tgt.txt')]!r}]) == 0\n"
            "assert 'torch' not in sys.modules  # check-data needs no torch: the settings cost nothing\n" + REPORT)
    out = run_python(code)
    assert out["settings"] == {"spin_count": runtime.SPIN_COUNT, "spin_applies": True, "follow_free_cores": True,
                               "malloc_tuned": sys.platform.startswith("linux"), "onednn_cache": runtime.ONEDNN_CACHE_CAPACITY}
    assert out["spin"] == str(runtime.SPIN_COUNT) and out["malloc"] == sys.platform.startswith("linux")
    assert out["onednn"] == str(runtime.ONEDNN_CACHE_CAPACITY)


def test_openmp_settings_the_user_made_are_kept():
    out = run_python("from seq2seqkit.runtime import configure_process\nconfigure_process()\n" + REPORT,
                     OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="2", ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024")
    assert out["spin"] is None and out["settings"]["spin_count"] is None
    assert out["onednn"] == "1024" and out["settings"]["onednn_cache"] is None
    assert out["settings"]["follow_free_cores"] is False  # the user chose the thread count


def test_too_late_after_torch_is_said_and_known():
    code = ("import logging, torch\nlogging.basicConfig()\n"
            "from seq2seqkit.runtime import configure_process, threads_spin\n"
            "configure_process(malloc=False)\nassert threads_spin()\n" + REPORT)
    clean = {k: v for k, v in os.environ.items() if k not in OPENMP_ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, check=True)
    assert "call configure_process() before importing torch" in proc.stderr
    assert json.loads(proc.stdout)["settings"]["spin_applies"] is False


def test_free_cores_are_between_none_and_all():
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)
    probe = FreeCores()
    sum(range(200_000))  # some CPU time of our own, which is not another program's
    free = probe.reading()
    if sys.platform.startswith("linux"):
        assert free is not None and 0.0 <= free <= usable_cores()


def test_free_cores_count_other_programs_only(tmp_path, monkeypatch):
    """Busy time of the process's cores, less its own CPU time, is what the others took."""
    stat, tick, clock = tmp_path / "stat", os.sysconf("SC_CLK_TCK"), {"wall": 0.0, "own": 0.0}
    monkeypatch.setattr(FreeCores, "STAT", stat)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(runtime.time, "process_time", lambda: clock["own"])
    #           user nice system idle iowait irq softirq steal
    rows = "cpu  0 0 0 0 0 0 0 0\ncpu0 {} 0 0 0 0 0 0 0\ncpu1 0 0 {} 50 9 0 0 {}\ncpu9 {} 0 0 0 0 0 0 0\n"
    stat.write_text(rows.format(0, 0, 0, 0))
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1})
    probe = FreeCores()
    # 10 s later: cpu0 was busy 10 s (5 s of it ours), cpu1 4 s in the kernel and 1 s stolen by
    # the hypervisor; idle and I/O wait are free; cpu9 is not one of ours
    stat.write_text(rows.format(10 * tick, 4 * tick, 1 * tick, 999 * tick))
    clock.update(wall=10.0, own=5.0)
    assert probe.reading() == pytest.approx(2 - (15 - 5) / 10)
    clock.update(wall=20.0, own=15.0)  # the next 10 s: only we ran, on both cores
    stat.write_text(rows.format(15 * tick, 9 * tick, 1 * tick, 999 * tick))
    assert probe.reading() == pytest.approx(2.0)


def watch(monkeypatch, free: float | None, adapt: bool = False) -> CoreWatch:
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)  # the readings below are of a 2-core machine
    w = CoreWatch("training.num_threads", every=0.0, first=0.0, adapt=adapt)
    monkeypatch.setattr(w.probe, "reading", lambda: free)
    return w


@pytest.fixture
def configured(monkeypatch):
    """This process as configure_process() leaves it, without changing it."""
    monkeypatch.setenv("GOMP_SPINCOUNT", str(runtime.SPIN_COUNT))
    monkeypatch.setattr(runtime, "_process", runtime.ProcessSettings(runtime.SPIN_COUNT, True, True, False))


def busy_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "other programs are using the CPU" in r.getMessage()]


def test_busy_cores_are_said_once_with_the_setting(configured, monkeypatch, caplog):
    w = watch(monkeypatch, 0.9)
    with caplog.at_level(logging.WARNING, logger="seq2seqkit"):
        for _ in range(3):
            w.check(2)
    [message] = busy_warnings(caplog)
    assert "0.9 of" in message and "for 2 threads" in message and "training.num_threads=1" in message


def test_spinning_threads_are_told_what_helps(monkeypatch, caplog):
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runtime, "_process", None)
    with caplog.at_level(logging.WARNING, logger="seq2seqkit"):
        watch(monkeypatch, 1.2).check(2)
    [message] = busy_warnings(caplog)
    assert "spin" in message and "GOMP_SPINCOUNT" in message and "training.num_threads=1" in message


def test_threads_follow_the_free_cores_when_left_to_the_toolkit(configured, monkeypatch, caplog):
    threads = []
    monkeypatch.setattr("torch.set_num_threads", threads.append)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    free = iter([1.1, 0.2, 3.8])
    w = CoreWatch("training.num_threads", every=0.0, first=0.0, adapt=True)
    monkeypatch.setattr(w.probe, "reading", lambda: next(free))
    with caplog.at_level(logging.WARNING, logger="seq2seqkit"):
        w.check(4)
        w.check(1)  # already one thread: nothing to change
        w.check(1)  # the others are done
    assert threads == [1, 4]
    [message] = busy_warnings(caplog)
    assert "goes on with 1" in message


def test_without_configure_process_the_thread_count_stays(monkeypatch):
    monkeypatch.setattr(runtime, "_process", None)
    monkeypatch.setattr("torch.set_num_threads", lambda n: pytest.fail("changed the thread count"))
    watch(monkeypatch, 0.5, adapt=True).check(2)


@pytest.mark.parametrize("free, threads", [(2.0, 2), (1.6, 2), (0.3, 1), (None, 4)])
def test_enough_or_unknown_free_cores_are_not_a_warning(configured, monkeypatch, caplog, free, threads):
    with caplog.at_level(logging.WARNING, logger="seq2seqkit"):
        watch(monkeypatch, free).check(threads)
    assert busy_warnings(caplog) == []


def test_training_warns_once_on_a_busy_machine(tmp_path, monkeypatch, caplog):
    from seq2seqkit.training import Trainer

    monkeypatch.setattr(FreeCores, "reading", lambda self: 0.5)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)  # 2 threads are not capped on a 1-core runner
    cfg = tiny_config(tmp_path, max_steps=4, validate_every=4, num_threads=2)
    cfg.data.dev_max_examples = 20
    trainer = Trainer(cfg)
    trainer.cores.every, trainer.cores._due = 0.0, 0.0  # check at every update
    with caplog.at_level(logging.WARNING, logger="seq2seqkit"):
        trainer.train()
    busy = [r for r in caplog.records if "other programs are using the CPU" in r.getMessage()]
    assert len(busy) == 1 and "for 2 threads" in busy[0].getMessage()


def test_more_threads_than_cores_are_capped_at_the_cores_and_said_once(tmp_path, monkeypatch, caplog):
    """training.num_threads=1000 on 2 cores started 1,000 spinning threads: 2 updates of the G2P
    quick config had not finished after 10 minutes."""
    import torch

    from seq2seqkit.training import Trainer

    monkeypatch.setattr(runtime, "usable_cores", lambda: 1)
    monkeypatch.setattr(runtime, "_said_capped", set())
    assert runtime.capped_threads(1) == 1
    before = torch.get_num_threads()
    cfg = tiny_config(tmp_path, max_steps=2, validate_every=2, num_threads=1000)
    cfg.data.dev_max_examples = 20
    try:
        with caplog.at_level(logging.WARNING, logger="seq2seqkit"):
            trainer = Trainer(cfg)
            assert torch.get_num_threads() == 1
            trainer.train()
            assert runtime.capped_threads(1000) == 1  # asked again (as distributed set-up does): not said again
    finally:
        torch.set_num_threads(before)
    said = [r.getMessage() for r in caplog.records if "training.num_threads=1000" in r.getMessage()]
    assert said == ["training.num_threads=1000: this process may use 1 core; training with 1 thread (threads beyond "
                    "the cores only wait for each other)"]



JEMALLOC = ctypes.util.find_library("jemalloc")  # Debian: apt-get install libjemalloc2 (.ci/run installs it)
UNDER_JEMALLOC = """
import os
from seq2seqkit import runtime
expect = int(os.environ["EXPECT_DECAY"])
assert runtime.jemalloc() is not None
assert runtime.keep_freed_memory()
assert [runtime.jemalloc_get(f"arena.0.{k}_decay_ms") for k in ("dirty", "muzzy")][0] == expect
assert runtime.jemalloc_get("arenas.dirty_decay_ms") == expect  # arenas made later too
import torch
x = torch.ones(64 << 20, dtype=torch.uint8)
del x
kept = runtime.resident_bytes()
assert runtime.release_freed_memory()
if expect == -1:  # kept until purged (with decay on, jemalloc may have returned it already)
    assert kept - runtime.resident_bytes() > 48 << 20, (kept, runtime.resident_bytes())
"""


@pytest.mark.skipif(not JEMALLOC or not sys.platform.startswith("linux"), reason="libjemalloc not installed")
@pytest.mark.parametrize("malloc_conf, decay", [(None, -1), ("dirty_decay_ms:5000", 5000)])
def test_under_a_preloaded_jemalloc_freed_pages_are_kept_and_released_on_request(malloc_conf, decay):
    """keep_freed_memory turns jemalloc's decay off (its default: 10 s), unless the user's
    MALLOC_CONF says how jemalloc should run; release_freed_memory purges: resident memory falls
    by a freed 64 MiB tensor's pages."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_CONF"}
    env.update(LD_PRELOAD=JEMALLOC, EXPECT_DECAY=str(decay), **({"MALLOC_CONF": malloc_conf} if malloc_conf else {}))
    run = subprocess.run([sys.executable, "-c", UNDER_JEMALLOC], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def run_s2s_train(tiny_yaml: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", runtime.ALLOCATOR_ENV, "MALLOC_CONF")}
    return subprocess.run([sys.executable, "-m", "seq2seqkit", "train", str(tiny_yaml), f"output_dir={out}",
                           "training.log_every=1"], env={**clean, **env}, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not JEMALLOC or not sys.platform.startswith("linux"), reason="libjemalloc not installed")
def test_s2s_train_runs_under_jemalloc_where_the_system_has_it(tiny_yaml, tmp_path):
    """The program restarts itself with jemalloc preloaded before it trains (the log says which
    allocator ran), and S2S_ALLOCATOR=system keeps glibc's; the train log records peak memory."""
    run = run_s2s_train(tiny_yaml, tmp_path / "je")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "memory allocator: jemalloc" in run.stderr
    train = [json.loads(x) for x in (tmp_path / "je" / "train_log.jsonl").read_text().splitlines()]
    assert all(e["rss_peak_mib"] > 50 for e in train if e["kind"] == "train")
    run = run_s2s_train(tiny_yaml, tmp_path / "sys", S2S_ALLOCATOR="system")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "memory allocator: system" in run.stderr


def test_an_unknown_allocator_is_one_line(tiny_yaml, tmp_path):
    run = run_s2s_train(tiny_yaml, tmp_path / "x", S2S_ALLOCATOR="tcmalloc")
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "s2s: error: S2S_ALLOCATOR='tcmalloc': expected auto, jemalloc or system"]
    assert not (tmp_path / "x").exists()
