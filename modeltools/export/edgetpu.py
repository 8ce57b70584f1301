"""Edge TPU compilation of the int8 models, where Coral's ``edgetpu_compiler`` is installed.

The compiler (x86-64 Debian package ``edgetpu-compiler`` from Coral's apt repository) writes
``<name>_edgetpu.tflite`` and prints how many operations map to the TPU; ops it cannot map run
on the CPU inside the same file. The bundle then lists the compiled file as the model's
``edgetpu_file`` and the agent prefers it when ``inference.accelerator: edgetpu`` is configured.
Where the compiler is absent (CI, this machine) the export records that and ships CPU models only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

COMPILER = "edgetpu_compiler"
_TPU = re.compile(r"Number of operations that will run on Edge TPU:\s*(\d+)")
_CPU = re.compile(r"Number of operations that will run on CPU:\s*(\d+)")


@dataclass(frozen=True)
class EdgeTpuResult:
    data: bytes
    tpu_ops: int | None
    cpu_ops: int | None

    def summary(self) -> str:
        if self.tpu_ops is None:
            return "compiled (op mapping not reported)"
        return f"{self.tpu_ops} ops on the Edge TPU, {self.cpu_ops or 0} on the CPU"


def compiler_path() -> str | None:
    return shutil.which(COMPILER)


def compile_model(data: bytes, name: str, timeout_s: float = 600.0) -> EdgeTpuResult:
    """Compile one int8 model; raises RuntimeError with the compiler's message on failure."""
    exe = compiler_path()
    if exe is None:
        raise RuntimeError(f"{COMPILER} is not installed")
    with tempfile.TemporaryDirectory(prefix="chorus-edgetpu-") as tmp:
        src = Path(tmp) / f"{name}.tflite"
        src.write_bytes(data)
        proc = subprocess.run(
            [exe, "-s", "-o", tmp, str(src)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        out = Path(tmp) / f"{name}_edgetpu.tflite"
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 or not out.is_file():
            last = text.strip().splitlines()[-1] if text.strip() else f"exit {proc.returncode}"
            raise RuntimeError(f"{COMPILER} failed on {name}: {last}")
        tpu, cpu = _TPU.search(text), _CPU.search(text)
        return EdgeTpuResult(
            out.read_bytes(),
            int(tpu.group(1)) if tpu else None,
            int(cpu.group(1)) if cpu else None,
        )
