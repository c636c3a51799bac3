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
