"""What the benches share: free ports, /proc readings of process trees, and an untrained exported model.

The benches run as scripts (`python bench/NAME.py`, this folder first on sys.path) and are loaded by file
from tests; each puts this folder on sys.path before importing this module.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process; 0 once it is gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def export_untrained(root: Path, size: int = 299, int8: bool = False, calibration_images: int = 16) -> Path:
    """A run folder under ``root`` holding an untrained Inception-v3 at ``size``² exported as `semtag export`
    does (model.onnx, and model.int8.onnx with ``int8``): for speed and sizes only, its predictions mean
    nothing."""
    spec = importlib.util.spec_from_file_location("models_speed", Path(__file__).with_name("models_speed.py"))
    ms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ms)
    from models.export import export_run

    run = ms._untrained_run(size, root)
    export_run(run, int8=int8, calibration_images=calibration_images)
    return run
