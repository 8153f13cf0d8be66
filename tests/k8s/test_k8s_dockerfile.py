"""The Dockerfile cannot be built here (no container engine): parse it and check what matters."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass

import pytest
import tomllib
from k8s_support import REPO, checkov_path

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Instruction:
    cmd: str
    args: str
    stage: int  # index of the FROM it belongs to; -1 before the first FROM


def parse(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    out: list[Instruction] = []
    stage = -1
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        cmd, _, args = buf.strip().partition(" ")
        cmd = cmd.upper()
        if cmd == "FROM":
            stage += 1
        out.append(Instruction(cmd, args.strip(), stage))
        buf = ""
    assert not buf, "dangling line continuation"
    return out


def arg_defaults(instructions: list[Instruction], stage: int) -> dict[str, str]:
    values: dict[str, str] = {}
    for ins in instructions:
        if ins.cmd == "ARG" and ins.stage == stage:
            name, _, default = ins.args.partition("=")
            values[name] = default
    return values


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], text)


def base_images(build_args: dict[str, str] | None = None) -> list[str]:
    instructions = parse(DOCKERFILE.read_text())
    variables = {**arg_defaults(instructions, -1), **(build_args or {})}
    return [
        expand(ins.args.split()[0], variables)
        for ins in instructions
        if ins.cmd == "FROM" and not ins.args.startswith("--")
    ]


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def test_base_image_is_a_pinned_ray_python311_image() -> None:
    gpu = base_images()
    assert gpu and set(gpu) == {"rayproject/ray:2.60.0-py311-gpu"}
    cpu = base_images({"VARIANT": "cpu"})
    assert set(cpu) == {"rayproject/ray:2.60.0-py311-cpu"}
    for image in gpu + cpu:
        _, _, tag = image.partition(":")
        assert re.fullmatch(r"\d+\.\d+\.\d+-py311-(cpu|gpu)", tag), image


def test_ray_version_matches_the_chart() -> None:
    import yaml

    values = yaml.safe_load((REPO / "helm" / "tdpdm" / "values.yaml").read_text())
    defaults = arg_defaults(parse(DOCKERFILE.read_text()), -1)
    assert defaults["RAY_VERSION"] == values["ray"]["version"]


def test_runs_as_uid_1000(instructions: list[Instruction]) -> None:
    final = max(i.stage for i in instructions)
    users = [i.args for i in instructions if i.cmd == "USER" and i.stage == final]
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] == "1000"


def test_torch_pinned_per_variant(instructions: list[Instruction]) -> None:
    final = max(i.stage for i in instructions)
    args = arg_defaults(instructions, final)
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    runs = " ".join(i.args for i in instructions if i.cmd == "RUN" and i.stage == final)
    assert '"torch==${TORCH_VERSION}+cpu"' in runs and "--index-url" in runs
    assert '"torch==${TORCH_VERSION}"' in runs
    for pin in (
        "OPACUS_VERSION",
        "PRV_ACCOUNTANT_VERSION",
        "DP_ACCOUNTING_VERSION",
        "PROMETHEUS_CLIENT_VERSION",
    ):
        assert re.fullmatch(r"[\d.]+", args[pin]), pin
        assert f"${{{pin}}}" in runs


def test_package_and_console_script_installed(instructions: list[Instruction]) -> None:
    final = max(i.stage for i in instructions)
    runs = " ".join(i.args for i in instructions if i.cmd == "RUN" and i.stage == final)
    assert "tdpdm-*.whl)[s3]" in runs
    assert "command -v tdpdm" in runs and "pip check" in runs
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tdpdm"] == "tdpdm.cli:main"
    (cmd,) = [i for i in instructions if i.cmd == "CMD"]
    assert json.loads(cmd.args)[0] == "tdpdm"
    assert not [i for i in instructions if i.cmd == "ENTRYPOINT"], (
        "KubeRay sets the container command itself; an ENTRYPOINT would wrap `ray start`"
    )
    workdirs = [i.args for i in instructions if i.cmd == "WORKDIR" and i.stage == final]
    assert workdirs[-1] == "/app"


def test_no_secrets_in_the_image(instructions: list[Instruction]) -> None:
    secret = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)", re.I)
    for ins in instructions:
        if ins.cmd in ("ENV", "ARG", "LABEL"):
            assert not secret.search(ins.args), f"{ins.cmd} {ins.args}"
        if ins.cmd in ("COPY", "ADD"):
            sources = shlex.split(ins.args)
            for src in sources[:-1]:
                if not src.startswith("--"):
                    assert not re.search(r"\.env|\.aws|kube|\.pem|\.key", src), src
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    active = [line for line in dockerignore if line and not line.startswith("#")]
    assert active[0] == "*", ".dockerignore must be an allow-list"
    assert not any(line.startswith("!.") for line in active), "no dotfiles in the build context"


def test_small_layers(instructions: list[Instruction]) -> None:
    env = " ".join(i.args for i in instructions if i.cmd == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env
    for ins in instructions:
        if ins.cmd == "RUN" and "pip install" in ins.args:
            assert "--no-cache-dir" in ins.args
        assert not (ins.cmd == "RUN" and re.search(r"apt-get install(?!.*rm -rf)", ins.args))
    assert next(i for i in instructions if i.cmd == "FROM").args.endswith("AS build"), (
        "the wheel is built in a throw-away stage"
    )


def test_checkov_dockerfile_checks_pass() -> None:
    proc = subprocess.run(
        [
            checkov_path(),
            "-f",
            str(DOCKERFILE),
            "--framework",
            "dockerfile",
            "--output",
            "json",
            "--quiet",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    if isinstance(report, list):
        (report,) = report
    failed = [c["check_id"] for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 0
