"""MetaSchedule tuning databases: where they live, which target they fit, and the tuning run itself.

Databases are keyed by a fixed preset (``x86-64-v3``: AVX2+FMA, ``x86-64-v4``: AVX-512, ``cortex-a72``, ...),
never by the host's exact CPU, so a database tuned on one machine applies on the next of the same class.
Records whose target does not fit the compile target are ignored with a notice, never applied.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError
from export.targets import TargetPreset

SHIPPED = Path(__file__).resolve().parent / "tuning"
RECORDS = "database_tuning_record.json"  # the file that makes a folder a MetaSchedule JSON database


def _x86_level() -> str:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "x86-64-v4"
    if {"avx2", "fma", "bmi2"} <= flags:
        return "x86-64-v3"
    return "x86-64"


def tuning_key(preset: TargetPreset) -> str:
    """The fixed class a database is tuned for and shipped under."""
    t = preset.target
    if t.get("kind") == "cuda":
        return "cuda"
    mcpu = t.get("mcpu", "native")
    if mcpu == "native":
        return _x86_level() if preset.arch == "x86_64" else preset.arch
    return str(mcpu)


def database_dir(preset: TargetPreset, model: str, size: tuple[int, int]) -> Path | None:
    return SHIPPED / tuning_key(preset) / f"{model}-{size[0]}x{size[1]}"


def tuning_target(preset: TargetPreset, cuda_arch: str | None = None):
    """The target tuning runs under: the preset, with x86 ``native`` replaced by its fixed class."""
    import tvm

    t = preset.resolved_target(cuda_arch)
    if preset.target.get("mcpu") == "native":
        t["mcpu"] = tuning_key(preset)
    if t.get("kind") == "llvm" and "num-cores" not in t:
        # MetaSchedule's CPU rules size parallel loops by it and refuse a target without it
        t["num-cores"] = _physical_cores()
    return tvm.target.Target(t)


def _physical_cores() -> int:
    import os

    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return os.cpu_count() or 1


def _records_fit(record_target, target) -> bool:
    rt, ct = record_target.export(), target.export()
    if rt.get("kind") != ct.get("kind") or str(rt.get("mtriple", "")).split("-")[0] != \
            str(ct.get("mtriple", "")).split("-")[0]:
        return False
    if rt.get("kind") == "cuda":
        return rt.get("arch") == ct.get("arch")
    return rt.get("mcpu") in (ct.get("mcpu"), None) or rt.get("mcpu") == _class_of(ct.get("mcpu"))


def _class_of(mcpu: str | None) -> str | None:
    if mcpu and not mcpu.startswith(("x86-64", "cortex")):
        return _x86_level()  # a host CPU name: its class is the host's feature level
    return mcpu


@dataclass(frozen=True)
class Database:
    """A tuning database read for one target: where it came from and the records that fit the target."""

    path: Path
    records: object  # a MetaSchedule MemoryDatabase
    used: int  # records kept (those made for another target are dropped)


def shipped_database(preset: TargetPreset, model: str, size: tuple[int, int]) -> Path | None:
    """The tuning database shipped for this preset, model and tile size, if any (what a plain export applies)."""
    d = database_dir(preset, model, size)
    return d if d is not None and (d / RECORDS).is_file() else None


def open_database(work_dir: Path, preset: TargetPreset, cuda_arch: str | None = None) -> Database:
    """The database at ``work_dir`` for compiling to ``preset``; a folder without one is refused."""
    if not (Path(work_dir) / RECORDS).is_file():
        raise EdgeError(f"--tuning-db {work_dir} holds no MetaSchedule database ({RECORDS}); tune into it first "
                        "with --tune N")
    records, used = load_database(work_dir, preset.tvm_target(cuda_arch))
    return Database(Path(work_dir), records, used)


def load_database(work_dir: Path, target):
    """A MemoryDatabase with only the records that fit ``target``; prints how many were ignored."""
    from tvm.s_tir import meta_schedule as ms

    src = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=False)
    db = ms.database.MemoryDatabase()
    used = ignored = 0
    for rec in src.get_all_tuning_records():
        if rec.target is not None and not _records_fit(rec.target, target):
            ignored += 1
            continue
        db.commit_workload(rec.workload.mod)
        db.commit_tuning_record(rec)
        used += 1
    if ignored:
        print(f"notice: {ignored} tuning records in {work_dir} were made for another target and are ignored",
              file=sys.stderr)
    return db, used


def rpc_endpoint(tracker: str | None, key: str | None) -> tuple[str, int, str]:
    """(host, port, key) of a TVM RPC tracker given as HOST:PORT, checked to answer and to hold a server
    registered under ``key`` (MetaSchedule's runner would otherwise wait for one forever)."""
    from export.rpc import check_tracker, parse_tracker

    if not tracker or not key:
        raise EdgeError("tuning on a device needs both --rpc-tracker HOST:PORT and --rpc-key KEY (the key the "
                        "board's RPC server registered with)")
    host, port = parse_tracker(tracker)
    check_tracker(tracker, key)
    return host, port, key


def _export_cross(cxx: str, mod) -> str:
    """MetaSchedule builder export for a cross target: a shared library linked by ``cxx`` (the device runs
    only TVM's runtime, so it cannot link the default tar of object files itself)."""
    import os
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="ms-cross-"), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler(cxx))
    return path


def _alloc_filled_on_host(session, device, args_info, alloc_repeat):
    """MetaSchedule RPC argument allocation without the server's random-fill function, which a runtime-only
    TVM (the device image's) does not have: the values are drawn here and copied over."""
    import numpy as np
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    rng = np.random.default_rng(0)

    def fill(arg) -> None:
        shape, dtype = tuple(int(d) for d in arg.shape), str(arg.dtype)
        kind = np.dtype(dtype).kind if dtype not in ("bfloat16",) else "f"
        host = rng.random(shape).astype(dtype) if kind == "f" else np.zeros(shape, dtype=dtype)
        arg.copyfrom(host)

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def _drop_unnamed_handlers() -> None:
    """MetaSchedule rebuilds its loggers with dictConfig from the names of the handlers already on its logger
    and fails on a handler without a name (e.g. one a test harness or an application attached); dictConfig
    replaces those handlers anyway."""
    import logging

    lg = logging.getLogger("tvm.s_tir.meta_schedule")
    for h in list(lg.handlers):
        if h.get_name() is None:
            lg.removeHandler(h)


def _import_intrinsics() -> None:  # builder worker initializer: the import is slow, do it once per worker
    import tvm.s_tir.tensor_intrin  # noqa: F401


def tune(m, input_name: str, shape: list[int], preset: TargetPreset, work_dir: Path, trials: int,
         cuda_arch: str | None = None, rpc: tuple[str, int, str] | None = None) -> int:
    """Tune the fused kernels of the ONNX graph ``m`` into the JSON database at ``work_dir``.

    Kernels that get a hand-written schedule (:mod:`export.schedules`) are not tuned: they are marked
    scheduled before task extraction, so the trials go to the rest. Returns how many kernels were tuned; a
    graph with none left still gets an (empty) database, so ``--tuning-db DIR`` works the same either way.
    """
    from tvm.s_tir import meta_schedule as ms

    from export.tvm_stage import import_onnx, lower

    if preset.is_cross and rpc is None:
        raise EdgeError(f"tuning for {preset.name} must measure on the device: pass --rpc-tracker HOST:PORT "
                        "--rpc-key KEY (a board or the emulated userland running a TVM RPC server)")
    target = tuning_target(preset, cuda_arch)
    mod = import_onnx(m, input_name, shape)
    mod, _, report = lower(mod, target, hand_kernels=preset.device == "cpu", generic=False)
    work_dir.mkdir(parents=True, exist_ok=True)
    # MetaSchedule skips a task only when its module (not its function) says scheduled: filter here
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target)
             if not any(f.attrs is not None and "tirx.is_scheduled" in f.attrs
                        for _, f in t.dispatched[0].functions.items())]
    if not tasks:
        ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=True)  # writes the two empty files
        print(f"notice: nothing to tune: all {report.count} fused kernels have hand-written schedules; "
              f"{work_dir} holds an empty database", file=sys.stderr)
        return 0
    f_export = functools.partial(_export_cross, preset.cross_compiler) if preset.cross_compiler else None
    builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=600, initializer=_import_intrinsics,
                                      f_export=f_export)
    if rpc is not None:
        host, port, key = rpc
        # emulated or slow boards: long sessions; wall times over RPC rank candidates, nothing more
        runner = ms.runner.RPCRunner(ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                                         session_timeout_sec=900), max_workers=1,
                                     f_alloc_argument=_alloc_filled_on_host)
    else:
        runner = ms.runner.LocalRunner(timeout_sec=120)
    _drop_unnamed_handlers()
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, str(work_dir), seed=0)
    ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work_dir),
                       max_trials_global=max(trials, len(tasks)), num_trials_per_iter=min(64, max(trials // 4, 2)),
                       builder=builder, runner=runner)
    return len(tasks)
