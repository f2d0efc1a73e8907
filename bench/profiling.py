"""``--profile``: py-spy attached to relay A and relay B during one relay run.

py-spy samples the live processes from outside (no code change, no restart)
at 200 Hz in its default blocking mode (it pauses the process for each
sample, so stacks are consistent; this slows the relay a little, which is
why the profiled run is separate from the measured ones).  It needs ptrace
permission on the relays: root has it; otherwise the reason is reported.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: py-spy output formats and the file suffix of each.
FORMATS = {"speedscope": ".speedscope.json", "flamegraph": ".svg"}
RATE = 200


def py_spy_command(py_spy: str, pid: int, fmt: str, output: Path, rate: int = RATE) -> list[str]:
    """py-spy record until interrupted (SIGINT makes it write the file and exit)."""
    return [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", fmt,
            "--output", str(output)]


@dataclass
class Recorder:
    name: str
    output: Path
    popen: subprocess.Popen[bytes]
    log_path: Path

    def finish(self, timeout: float = 60.0) -> str | None:
        """Stop sampling and wait for the file; returns None or what went wrong."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            return f"py-spy for {self.name} did not stop"
        if not self.output.is_file() or self.output.stat().st_size == 0:
            log = self.log_path.read_text("utf-8", "replace").strip().splitlines()
            return f"py-spy for {self.name} wrote no file: {' '.join(log[-3:])}"
        return None


def start_recorder(py_spy: str, name: str, pid: int, fmt: str, output: Path,
                   log_dir: Path) -> Recorder:
    log_path = log_dir / f"py-spy-{name}-{fmt}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(py_spy_command(py_spy, pid, fmt, output),
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    return Recorder(name, output, popen, log_path)
