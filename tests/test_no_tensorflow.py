"""The device has no TensorFlow: `hemato run` must work where importing tensorflow fails."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCKER = """
import sys

class _Blocked:
    '''Make importing the named top-level packages fail, as on a device where they are not installed.'''
    names = {names!r}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""


def python_without(blocked: set[str], tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter where importing the `blocked` packages raises ImportError."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(BLOCKER.format(names=sorted(blocked)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO)]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_run_works_without_tensorflow_and_never_imports_it(tmp_path, smear_folder, tiny_tflite):
    out = tmp_path / "r.csv"
    result = python_without({"tensorflow"}, tmp_path, f"""
        import sys
        try:
            import tensorflow
            sys.exit("tensorflow is importable: the blocker did not work")
        except ImportError:
            pass
        from hemato.cli import main
        status = main(["run", {str(smear_folder)!r}, "--model", {str(tiny_tflite)!r}, "--csv", {str(out)!r}])
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print("LEAKED", leaked)
        sys.exit(status)
    """)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LEAKED []" in result.stdout
    assert "ai-edge-litert" in result.stdout  # the first interpreter choice
    assert "Cells classified: 3" in result.stdout
    assert len(out.read_text().splitlines()) == 1 + 3


def test_no_interpreter_at_all_is_one_clear_line(tmp_path, smear_folder, tiny_tflite):
    result = python_without({"tensorflow", "ai_edge_litert", "tflite_runtime"}, tmp_path, f"""
        import sys
        from hemato.cli import main
        sys.exit(main(["run", {str(smear_folder)!r}, "--model", {str(tiny_tflite)!r}]))
    """)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no TFLite interpreter found" in lines[0] and "pip install" in lines[0]
    assert not (tmp_path / "results.csv").exists()


def test_the_edge_core_apps_and_evaluation_never_import_tensorflow(tmp_path):
    """evaluation (hemato verify) and the edge core run on the device: importing them must not need TensorFlow."""
    result = python_without({"tensorflow", "keras"}, tmp_path, """
        import importlib, pkgutil, sys
        import edge_app.core, evaluation
        names = [m.name for package in (edge_app.core, evaluation)
                 for m in pkgutil.iter_modules(package.__path__, package.__name__ + ".")]
        names += ["edge_app.run.cli", "evaluation.verify"]
        for name in names:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print("IMPORTED", len(names), "LEAKED", leaked)
    """)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LEAKED []" in result.stdout


def test_the_core_imports_no_app_and_the_apps_not_each_other():
    """edge_app.core knows nothing of run and web; run and web import only the core."""
    rules = {"core": ("edge_app.run", "edge_app.web"), "run": ("edge_app.web",), "web": ("edge_app.run",)}
    for part, forbidden in rules.items():
        for path in (REPO / "edge_app" / part).glob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert not [name for name in forbidden if name in text], path
