"""The protocol's ``env`` block names the machine a metric was computed on."""

import platform
from pathlib import Path

import torch

import bnr.pipeline.protocol as protocol


def test_cpu_model_name_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                    "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx512f amx_tile\n"
                    "\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n")
    assert protocol.cpu_model_name(info) == "Intel(R) Xeon(R) Platinum 8480+"


def test_cpu_model_name_falls_back_without_cpuinfo(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(platform, "processor", lambda: "x86_64-fallback")
    assert protocol.cpu_model_name(tmp_path / "absent") == "x86_64-fallback"
    (tmp_path / "empty").write_text("processor\t: 0\n")  # no model name line (some VMs, ARM)
    assert protocol.cpu_model_name(tmp_path / "empty") == "x86_64-fallback"


def test_environment_records_cpu_capability_threads_and_gpu(monkeypatch) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = protocol.environment()
    finally:
        torch.set_num_threads(before)
    assert env["torch_threads"] == 1
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu"] == protocol.cpu_model_name() and env["cpu"]
    assert env["torch"] == torch.__version__
    if not torch.cuda.is_available():
        assert env["gpu"] is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    assert protocol.environment()["gpu"] == "NVIDIA H200"


def test_git_state_names_the_changed_files_and_the_record_has_a_date(tmp_path) -> None:
    import subprocess

    from bnr.pipeline.protocol import git_state

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("1\n")
    git("add", "a.py")
    git("commit", "-qm", "a")
    assert git_state(tmp_path)["dirty"] is False and git_state(tmp_path)["changed"] == []
    (tmp_path / "a.py").write_text("2\n")
    state = git_state(tmp_path)
    assert state["dirty"] is True and state["changed"] == ["a.py"]
    from types import SimpleNamespace

    from bnr.pipeline.protocol import protocol_record

    record = protocol_record(SimpleNamespace(protocol=lambda: {}), split="train")
    assert record["date"][:2] == "20" and record["date"].endswith("+00:00")
