"""SIGTERM to a command writing a file removes the temporary file (issue #16, item 12)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

SLOW_WRITE = """
import sys, time
import fdn.images
real = fdn.images.atomic_write

def slow(path, write):
    def writer(tmp):
        write(tmp)
        open(sys.argv[1], "w").close()  # the temporary file is written: tell the test
        time.sleep(60)
    return real(path, writer)

fdn.images.atomic_write = slow
from fdn.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_while_writing_an_output_leaves_no_temporary_file(tmp_path):
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "in.png")
    ready, out = tmp_path / "ready", tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SLOW_WRITE,
            str(ready),
            "denoise",
            str(tmp_path / "in.png"),
            "-o",
            str(out),
            "--model",
            "fdn-color-blind",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    assert list(out.glob(".*.tmp"))  # the write is under way
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert not list(out.glob(".*.tmp")) and not (out / "in.png").exists()
