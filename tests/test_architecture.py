"""Rules of the codebase that keep the engine usable without the dashboard."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tlcore_never_imports_streamlit():
    for path in (ROOT / "tlcore").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "streamlit" for n in names), f"{path.name} imports streamlit"


def test_importing_every_tlcore_module_loads_no_streamlit():
    modules = sorted(p.stem for p in (ROOT / "tlcore").glob("*.py") if p.stem != "__main__")
    code = "import sys\n" + "".join(f"import tlcore.{m}\n" for m in modules) + "print('streamlit' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
