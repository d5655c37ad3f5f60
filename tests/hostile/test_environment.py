"""A hostile environment for edge-run: unwritable and full output folders, outputs that already exist, Ctrl-C
in the middle of a batch, a second edge-run on the same output folder at the same time."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))
from edge_fixtures import build_package, synthetic_fundus  # noqa: E402

from edge.cli import main  # noqa: E402
from edge.imageio import write_image  # noqa: E402

from hostile_harness import check_refusal, snapshot  # noqa: E402

EDGE_RUN = Path(sys.executable).with_name("edge-run")


@pytest.fixture(scope="module")
def pkg(tmp_path_factory) -> Path:
    return build_package(tmp_path_factory.mktemp("pkg") / "tiny")


@pytest.fixture
def photo(tmp_path) -> Path:
    p = tmp_path / "f.png"
    write_image(p, synthetic_fundus(120, 150, 0))
    return p


def test_unwritable_output_folder(pkg, photo, tmp_path, expect_refusal):
    target = Path("/proc/self/out") if os.geteuid() == 0 else tmp_path / "ro" / "out"
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
    expect_refusal(main, [photo, "--package", pkg, "-o", target], watch=[tmp_path],
                   match=r"cannot write into output folder .*choose a writable folder with -o", rc=4)


def test_output_folder_that_is_a_file(pkg, photo, tmp_path, expect_refusal):
    f = tmp_path / "out"
    f.write_text("a file where the folder should be")
    expect_refusal(main, [photo, "--package", pkg, "-o", f], watch=[tmp_path], match=r"output folder", rc=4)


def test_json_summary_into_a_missing_folder(pkg, photo, tmp_path, expect_refusal):
    expect_refusal(main, [photo, "--package", pkg, "-o", tmp_path / "out", "--json", "/proc/self/x/run.json"],
                   watch=[tmp_path], match=r"cannot write into output folder /proc/\S+/x .*choose a writable folder")


def test_a_full_disk_leaves_no_partial_output(pkg, photo, tmp_path, monkeypatch, expect_refusal):
    """ENOSPC at the third output of an image: none of its outputs stay, the summary says which failed."""
    import edge.imageio as eio

    real = os.replace
    calls = {"n": 0}

    def full(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)

    monkeypatch.setattr(eio.os, "replace", full)
    out = tmp_path / "out"
    out.mkdir()
    r = expect_refusal(main, [photo, "--package", pkg, "-o", out, "--overlay"], watch=[out],
                       match=r"No space left on device.*free some space", rc=4)
    assert "f.png" in r.line


def test_a_real_full_filesystem(pkg, photo, tmp_path, expect_refusal):
    """A 96 KiB tmpfs: the first image fits, the second does not; the second leaves nothing behind."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        big = tmp_path / "big.png"
        write_image(big, synthetic_fundus(400, 400, 1))
        assert main([str(photo), "--package", str(pkg), "-o", str(mnt)]) == 0
        expect_refusal(main, [big, "--package", pkg, "-o", mnt, "--float", "--overlay"], watch=[mnt],
                       match=r"No space left on device", rc=4)
        assert not [p for p in mnt.iterdir() if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_existing_outputs_are_not_replaced_without_overwrite(pkg, photo, tmp_path, expect_refusal, capsys):
    out = tmp_path / "out"
    assert main([str(photo), "--package", str(pkg), "-o", str(out)]) == 0
    (out / "f_mask.png").write_bytes(b"the radiologist's corrected mask")
    expect_refusal(main, [photo, "--package", pkg, "-o", out], watch=[out],
                   match=r"f_(prob|mask)\.png and 1 more already exist; pass --overwrite", rc=4)
    assert (out / "f_mask.png").read_bytes() == b"the radiologist's corrected mask"
    (tmp_path / "run.json").write_text("{}")
    expect_refusal(main, [photo, "--package", pkg, "-o", tmp_path / "o2", "--json", tmp_path / "run.json"],
                   watch=[tmp_path], match=r"run\.json already exist")
    capsys.readouterr()
    assert main([str(photo), "--package", str(pkg), "-o", str(out), "--overwrite"]) == 0
    assert (out / "f_mask.png").read_bytes()[:4] == b"\x89PNG"


def test_a_second_edge_run_on_the_same_folder_is_refused(pkg, photo, tmp_path, expect_refusal):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(  # another edge-run holding the folder's lock
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from edge.cli import OutputLock\n"
         "with OutputLock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        expect_refusal(main, [photo, "--package", pkg, "-o", out], watch=[out],
                       match=r"another edge-run is writing into .*wait for it to finish or choose another", rc=4)
    finally:
        holder.kill()
        holder.wait()
    assert main([str(photo), "--package", str(pkg), "-o", str(out)]) == 0  # a dead holder frees the folder


@pytest.mark.slow
def test_two_real_edge_runs_at_once(pkg, tmp_path):
    """A second edge-run started while the first writes into the same folder is refused at once; the first
    completes every image."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(30):
        write_image(d / f"img{i:02d}.png", synthetic_fundus(300, 340, i))
    out = tmp_path / "out"
    out.mkdir()
    cmd = [str(EDGE_RUN), str(d), "--package", str(pkg), "-o", str(out), "--backend", "onnxruntime"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "img00_mask.png").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    running = first.poll() is None
    rc_first = first.wait(timeout=300)
    assert running, "the first run ended before the second started: give it more images"
    assert rc_first == 0 and second.returncode == 4
    check_refusal(second.returncode, second.stdout, second.stderr, {}, {},
                  match=r"another edge-run is writing into .*wait for it to finish")
    assert len(list(out.glob("*_mask.png"))) == 30 and not list(out.glob(".*"))


@pytest.mark.slow
def _ctrl_c_delivered() -> None:
    """A child's SIGINT back to its default: a shell starts background jobs with SIGINT ignored (CI run as
    `cmd &`), and a child inherits that, so Ctrl-C would never reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_in_the_middle_of_a_batch(pkg, tmp_path):
    """SIGINT while a batch runs: exit 130, one line, and each image's outputs are all there or none."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(40):
        write_image(d / f"img{i:02d}.png", synthetic_fundus(300, 340, i))
    out = tmp_path / "out"
    before = snapshot([d])
    proc = subprocess.Popen([str(EDGE_RUN), str(d), "--package", str(pkg), "-o", str(out), "--float", "--overlay",
                             "--backend", "onnxruntime", "--json", str(tmp_path / "run.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_delivered)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "img02_mask.png").exists():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    stems = {p.name.rsplit("_", 1)[0] for p in out.iterdir()}
    names = sorted(p.name for p in out.iterdir())
    assert 0 < len(stems) < 40, names
    for stem in stems:  # all four outputs of every image that has any
        assert sorted(n for n in names if n.startswith(stem + "_")) == sorted(
            f"{stem}_{k}" for k in ("mask.png", "overlay.png", "prob.png", "prob.tif")), names
    assert not [n for n in names if n.startswith(".")], names  # no temporary file left
    assert not (tmp_path / "run.json").exists()  # the summary of an unfinished batch is not written
    check_refusal(130, stdout, stderr, before, snapshot([d]), match=r"interrupted; outputs in progress were not kept")


@pytest.mark.slow
@pytest.mark.parametrize("replace", [False, True])
def test_ctrl_c_during_edge_export_leaves_no_package(tmp_path, replace):
    """SIGINT while edge-export works: exit 130, one line, no package and no temporary folder beside it; with
    --force over an existing package, the old one is still there, whole."""
    out = tmp_path / "pkg"
    export = [str(Path(sys.executable).with_name("edge-export")), "unet", "--input-size", "64", "--out", str(out)]
    if replace:
        assert subprocess.run(export, capture_output=True).returncode == 0
        umask = os.umask(0)
        os.umask(umask)
        assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # an ordinary folder, not mkdtemp's 0700
        before = snapshot([out])
        export.append("--force")
    proc = subprocess.Popen(export, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_delivered)
    head = []
    for line in proc.stderr:  # the stages start after this line; U-Net's take ~20 s more here
        head.append(line)
        if "compiling for" in line:
            break
    time.sleep(2)
    assert proc.poll() is None, "the export finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=120)
    stderr = "".join(head) + rest
    assert proc.returncode == 130, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == (["pkg"] if replace else [])
    check_refusal(130, stdout, stderr, before if replace else {}, snapshot([out]) if replace else {},
                  match=r"interrupted")


def _run_cli_hit_by_ctrl_c(library) -> int:
    """run_cli on a body that gets SIGINT and hands the KeyboardInterrupt to ``library(exc)``, as a native library
    running a Python callback would (swallow it, or raise its own error), then returns 0. SIGINT is handled as an
    interactive shell starts a command (a background job, `cmd &` in CI, starts with SIGINT ignored)."""
    from edge.errors import run_cli

    def body() -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt as exc:
            library(exc)
        return 0

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_cli(body)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_a_native_library_turns_into_its_own_error_still_exits_130(capsys):
    """TVM's FFI re-raises a KeyboardInterrupt from a Python pass as RuntimeError (seen in CI when Ctrl-C hit
    edge-export inside the zero pipeline): still 130 and the one line, not a traceback. Without the signal, the
    same RuntimeError stays an error."""
    from edge.errors import run_cli

    def ffi(exc):
        raise RuntimeError("raised from a Python callback") from exc

    code = _run_cli_hit_by_ctrl_c(ffi)
    assert code == 130
    assert capsys.readouterr().err.strip() == "error: interrupted; outputs in progress were not kept"
    with pytest.raises(RuntimeError):
        run_cli(lambda: (_ for _ in ()).throw(RuntimeError("a real bug")))


def test_a_swallowed_ctrl_c_still_keeps_outputs_out(tmp_path, capsys):
    """TVM's pass pipeline swallows a KeyboardInterrupt raised in its Python callbacks; run_cli latches the
    signal, so the atomic writers refuse afterwards and the command still ends with 130."""
    from edge.errors import run_cli
    from edge.imageio import write_atomic

    code = _run_cli_hit_by_ctrl_c(lambda exc: write_atomic(tmp_path / "out.png", b"data"))  # swallowed, then written
    assert code == 130
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.strip() == "error: interrupted; outputs in progress were not kept"
    assert run_cli(lambda: 0) == 0  # the latch is per command
