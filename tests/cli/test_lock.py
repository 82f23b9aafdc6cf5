"""One `flows run` per folder: a second one, while the first holds the folder's lock,
is refused in one line naming the holder's pid; the lock goes with its process."""

import subprocess
import sys

import numpy as np

from .helpers import assert_one_line_error, load_results, run_cli, write_config

CONFIG = {
    "problem": {"name": "quadratic", "eigenvalues": [0.5, 3.0, 9.0], "seed": 1},
    "run": {"lr": 0.1, "steps": 12, "save_every": 3, "num_eigenvalues": 0,
            "dtype": "float64"},
    "methods": {"gd": {}},
}

HOLD = """
import fcntl, os, sys
with open(sys.argv[1], "a+") as lock:
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.seek(0); lock.truncate(); lock.write(f"{os.getpid()}\\n"); lock.flush()
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_in_a_busy_folder_is_refused(tmp_path):
    path = write_config(tmp_path / "run.toml", CONFIG)
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run / ".lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli("run", path, "--out", run)
        assert code == 2
        assert_one_line_error(err)
        assert f"{run} is in use by another flows run (pid {holder.pid})" in err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()  # dies holding the lock: the system releases it
        holder.wait()
    code, _, err = run_cli("run", path, "--out", run)
    assert code == 0, err
    np.testing.assert_allclose(load_results(run)["gd/steps"], np.arange(0, 13, 3))
