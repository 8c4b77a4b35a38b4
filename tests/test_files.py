"""What results files record about the machine (tagi.files.package_versions)."""

from __future__ import annotations

import platform

import torch

from tagi.files import cpu_model, package_versions


def test_package_versions_record_the_cpu_and_its_kernel_capability():
    v = package_versions(("torch", "surely-not-a-package"))
    assert v["python"] == platform.python_version()
    assert v["torch"] == str(torch.__version__)
    assert v["surely-not-a-package"] == "not installed"
    assert v["cpu"] == cpu_model() and v["cpu"]
    assert v["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_cpu_model_falls_back_without_proc_cpuinfo(monkeypatch):
    from pathlib import Path

    real = Path.read_text

    def no_cpuinfo(self, *args, **kwargs):
        if str(self) == "/proc/cpuinfo":
            raise FileNotFoundError(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_cpuinfo)
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert cpu_model() == "unknown"
    monkeypatch.setattr(platform, "processor", lambda: "x86_64")
    assert cpu_model() == "x86_64"
