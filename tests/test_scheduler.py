"""The default scheduler: processes for the loop engine only where spawning them is safe."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import pytest

from xarray_modelfit._validate import default_scheduler, main_is_guarded

GUARDS = {
    'if __name__ == "__main__":\n    main()\n': True,
    "if '__main__' == __name__:\n    main()\n": True,
    "main()\n": False,
    'def f():\n    if __name__ == "__main__":\n        main()\n': False,  # not at top level
    'if __name__ != "__main__":\n    pass\n': False,
}


@pytest.mark.parametrize(("body", "guarded"), GUARDS.items())
def test_guard_detection(body, guarded, tmp_path, monkeypatch):
    script = tmp_path / "job.py"
    script.write_text("import xarray_modelfit\n\ndef main():\n    pass\n\n" + body)
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__=str(script)))
    assert main_is_guarded() is guarded
    assert default_scheduler("loop") == ("processes" if guarded else "threads")
    assert default_scheduler("batched") == "threads"


def test_interactive_sessions_are_safe(monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace())  # notebook, REPL, -c
    assert main_is_guarded() and default_scheduler("loop") == "processes"


def test_unguarded_script_runs_once_and_fits(tmp_path):
    """A plain script with the loop engine and no scheduler: its body runs once, the fit works."""
    log = tmp_path / "runs.log"
    script = tmp_path / "plain_script.py"
    script.write_text(
        textwrap.dedent(f"""
        import numpy as np
        from astropy.modeling import models

        import xarray_modelfit
        from xarray_modelfit.testing import gaussian_cube

        with open({str(log)!r}, "a") as f:
            f.write("run\\n")
        cube, truth = gaussian_cube(ny=2, nx=3)
        res = cube.modelfit(models.Gaussian1D(2, 0, 1.5), "velocity", engine="loop")
        assert np.allclose(res.amplitude, truth["amplitude"], atol=0.15), res.amplitude.values
        print("ok", int(res.attrs["n_converged"]))
    """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", "6"]
    assert log.read_text() == "run\n"


def test_a_guard_elsewhere_does_not_protect_top_level_calls(tmp_path):
    script = tmp_path / "mixed.py"
    script.write_text(
        textwrap.dedent("""
        from xarray_modelfit._validate import default_scheduler

        print(default_scheduler("loop"))  # top level, outside the guard: re-run by workers


        def main():
            print(default_scheduler("loop"))


        if __name__ == "__main__":
            main()
    """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["threads", "processes"]
