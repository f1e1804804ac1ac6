"""Rules of the codebase: the engine stands alone, its imports are layered, and settings exist everywhere at once."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tlcore"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules a file imports; with `top_level_only`, only those imported when it is loaded."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def tlcore_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def test_tlcore_never_imports_streamlit_or_the_dashboard():
    for path in PACKAGE.rglob("*.py"):
        for name in imports(path):
            assert name.split(".")[0] not in ("streamlit", "dashboard", "ui"), f"{path.name} imports {name}"


def test_importing_every_tlcore_module_loads_no_streamlit():
    modules = [module_name(p) for p in tlcore_files()]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('streamlit' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_the_settings_and_run_folders_import_no_keras():
    code = "import sys, tlcore.config, tlcore.runs, tlcore.layout\nprint(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_engine_and_a_jobs_state_import_no_keras():
    code = "import sys, tlcore.engines, tlcore.engines.local, tlcore.training.state\nprint(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


FRESH_SERVER = """
import sys
from streamlit.testing.v1 import AppTest
page = sys.argv[1]
at = AppTest.from_file("app.py", default_timeout=120).run()
if page != "data":
    at.switch_page(f"pages/{page}.py").run()
assert not at.exception, at.exception
print("tensorflow" in sys.modules)
"""


def test_pages_of_a_fresh_server_open_without_importing_tensorflow(tmp_path):
    # TensorFlow takes seconds to import: a page that does not train or build a model never waits for it.
    env = {**os.environ, "TLCORE_HOME": str(tmp_path / "home"), "TLCORE_RUNS": str(tmp_path / "runs")}
    for page in ("data", "train", "evaluate", "predict", "runs"):
        result = subprocess.run([sys.executable, "-c", FRESH_SERVER, page], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip().splitlines()[-1] == "False", f"the {page} page imported TensorFlow"


def test_tlcore_imports_have_no_cycles():
    known = {module_name(p): p for p in tlcore_files()}
    graph = {}
    for name, path in known.items():
        targets = set()
        for imported in imports(path, top_level_only=True):
            # `from tlcore.x import y` names module tlcore.x (or tlcore.x.y when y is a module).
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and imported != "tlcore":
                targets.add(imported)
        graph[name] = targets
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join(path[path.index(target):] + [target])
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_pages_render_only():
    for page in (ROOT / "pages").glob("*.py"):
        names = imports(page)
        assert not {n for n in names if n.split(".")[0] in ("keras", "tensorflow", "threading")}, page.name
        assert "tlcore.training.job" not in names and "tlcore.extraction" not in names, page.name
