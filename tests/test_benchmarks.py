"""The benchmarks keep working: they use only tlcore's public API, and each runs on a tiny input.

The static tests read each script's syntax tree: every `from tlcore... import name` must name a
public attribute (or submodule) that exists, and no attribute starting with an underscore may be
read or written on anything. The slow tests run each benchmark with `--smoke` in its own process
and look for its figures in what it prints.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MOBILENET_WEIGHTS, asset

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
FILES = sorted(BENCHMARKS.glob("*.py"))
HELPERS = {"common", "streamlit_session"}  # modules the benchmarks import, not benchmarks themselves
SCRIPTS = sorted(path.stem for path in FILES if path.stem not in HELPERS)
# Public names kept only so that old saved models load; new code must not use them.
RETIRED = {"tlcore.model.BackbonePreprocess": "use tlcore.model.preprocess or preprocessing_layers"}

# What each benchmark's `--smoke` run must print: its main figures, as regular expressions
# matched line by line (`re.MULTILINE`).
FIGURES = {
    "classroom": [
        r"^first visit of a fresh local server: page drawn after [\d.]+s$",
        r"^local\s+3\s+3\s+0\s+0\s+[\d.]+",  # three students, every run finished, none failed or lost
        r"^local: browser students finished 1 of 1;",
    ],
    "extraction_options": [
        r"^Raw forward, 96px \(best of 1",
        r"^folded batch norm \(tlcore\)\s+8\s+[\d.]+\s+[\d.e+-]+$",
        r"^Keras body \+ XLA\s+16\s+[\d.]+",
        r"^Extraction pipeline over real images \(best of 1\)$",
        r"^horse-or-human\s+folded batch norm \(tlcore\)\s+8\s+[\d.]+$",
    ],
    "exports": [
        r"^exported 5 formats in [\d.]+s",
        r"^keras\s+model\.keras\s+[\d.]+",
        r"^tflite-int8\s+model_int8\.tflite\s+[\d.]+",
        r"^onnx\s+model\.onnx\s+[\d.]+",
    ],
    "hostile": [r"^hostile: \d+ zips, \d+ images: \d+ as expected, 0 tracebacks, peak [\d.]+ GB$"],
    "hostile_cases": [r"^built \d+ zips, \d+ images into "],
    "retrain": [
        r"^first training: 12 images, [\d.]+s \(loading data",
        r"^Training again from the dataset folder to the saved model",
        r"^same process\s+dense 64, dropout 0\.5\s+[\d.]+\s+(True|False)",
        r"^fresh process \([\d.]+s with imports\)\s+dense 64",
        r"^feature cache: \d+ shards, [\d.]+ MB \(bound 4 GB",
    ],
    "scale": [
        r"^Scale \(features held in memory up to 0\.25 MB",
        r"^pooling\s+20\s+[\d.]+",
        r"^flatten\s+20\s+[\d.]+",
        r"^pooling: finished ",
        r"^flatten: finished ",
    ],
    "serving": [
        r"^Warm single-image prediction \(first load of the run's model: [\d.]+s\)$",
        r"^model forward, 1 prepared image \(the reference\)\s+[\d.]+\s+1\.000$",
        r"^predict_one, 300x300 RGBA PNG\s+[\d.]+\s+[\d.]+$",
        r"^Predictor\.from_run \(a load per request\)\s+[\d.]+",
        r"^mobilenet_v2\s+\d+\s+[\d.]+",
    ],
    "train_speed": [
        r"^Training, 1 epochs \(8 \+ 2 images\); floor = ",
        r"^tlcore\s+[\d.]+\s+[\d.]+\s+[\d.]+",
        r"^classic\s+[\d.]+\s+[\d.]+\s+[\d.]+",
        r"^tlcore, head settings changed\s+[\d.]+",
        r"^tlcore \+ fine-tune \(cold\)\s+[\d.]+",
        r"^tutorial fine-tune \(10\+ layers\)\s+[\d.]+",
        r"^tlcore / classic = [\d.]+ wall",
        r"^extraction [\d.]+ images/s \(decode \+ forward\) vs raw forward of the tlcore \(folded\)",
    ],
}


# Static: public API only ---------------------------------------------------------------------


def is_private(name: str) -> bool:
    """A leading underscore that is not a dunder such as `__file__`."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def resolve(module_name: str, name: str):
    """`module.name` if it exists, importing it as a submodule when needed; else raises AttributeError.

    A module that lists its API in `__all__` exports only those names.
    """
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    if exported is not None and name not in exported and hasattr(module, name):
        raise AttributeError(f"{module_name}.{name} is not in {module_name}.__all__")
    if hasattr(module, name):
        return getattr(module, name)
    try:
        return importlib.import_module(f"{module_name}.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"{module_name} has no attribute {name}") from None


def is_own(node: ast.Attribute) -> bool:
    """`self._x` in a benchmark's own class: its own business, not a reach into tlcore."""
    return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


def problems(source: str, filename: str = "<benchmark>") -> list[str]:
    """What in `source` breaks the rule: a tlcore import that is private or missing, or a private attribute."""
    tree = ast.parse(source, filename=filename)
    found: list[str] = []
    modules: dict[str, object] = {}  # local names bound to tlcore modules

    def where(node) -> str:
        return f"{filename}:{node.lineno}"

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tlcore":
            if node.level:
                found.append(f"{where(node)}: relative import from {node.module}")
                continue
            if any(is_private(part) for part in node.module.split(".")):
                found.append(f"{where(node)}: imports from private module {node.module}")
            for alias in node.names:
                if alias.name == "*":
                    found.append(f"{where(node)}: `from {node.module} import *`")
                    continue
                if is_private(alias.name):
                    found.append(f"{where(node)}: imports private name {node.module}.{alias.name}")
                    continue
                if f"{node.module}.{alias.name}" in RETIRED:
                    found.append(f"{where(node)}: imports {node.module}.{alias.name}, kept only for old models: "
                                 f"{RETIRED[f'{node.module}.{alias.name}']}")
                    continue
                try:
                    value = resolve(node.module, alias.name)
                except (ImportError, AttributeError) as error:
                    found.append(f"{where(node)}: `from {node.module} import {alias.name}` fails: {error}")
                    continue
                if isinstance(value, type(sys)):
                    modules[alias.asname or alias.name] = value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "tlcore":
                    continue
                if any(is_private(part) for part in alias.name.split(".")):
                    found.append(f"{where(node)}: imports private module {alias.name}")
                try:
                    module = importlib.import_module(alias.name)
                except ImportError as error:
                    found.append(f"{where(node)}: `import {alias.name}` fails: {error}")
                    continue
                if alias.asname:
                    modules[alias.asname] = module
                else:
                    modules["tlcore"] = importlib.import_module("tlcore")
        elif isinstance(node, ast.Attribute) and is_private(node.attr) and not is_own(node):
            found.append(f"{where(node)}: private attribute `.{node.attr}`")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and is_private(node.args[1].value)
        ):
            found.append(f"{where(node)}: private attribute `{node.args[1].value}` through {node.func.id}")

    # Attributes read or set on tlcore modules (such as `features.IN_MEMORY_BYTES`) must exist;
    # each whole chain `a.b.c` is checked once, from its outermost node.
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        chain, base = [], node
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in modules:
            continue
        value = modules[base.id]
        for attr in chain:
            if not isinstance(value, type(sys)):
                break  # beyond a module: an object's attributes are checked when the smoke run uses them
            try:
                value = resolve(value.__name__, attr)
            except (ImportError, AttributeError):
                found.append(f"{where(node)}: {base.id}.{'.'.join(chain)} does not exist")
                break
    return found


def test_every_benchmark_script_has_a_smoke_run():
    assert SCRIPTS, f"no benchmarks found in {BENCHMARKS}"
    assert sorted(FIGURES) == SCRIPTS


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_benchmark_uses_only_public_tlcore_api(path):
    assert problems(path.read_text(), path.name) == []


def test_the_public_api_check_finds_what_it_should():
    bad = """
from tlcore.extraction import FeatureExtractor, _same_features, no_such_name
from tlcore.predict import *
from tlcore.model import BackbonePreprocess
from tlcore import features, inputs
import tlcore.model as model
features.IN_MEMORY_BYTES = 1
features.NO_SUCH_CONSTANT = 1
inputs.image_dataset
model.nothing_here
extractor._extract(images)
predictor._forward(batch).numpy()
getattr(predictor, "_forward")
sys.__name__
"""
    found = problems(bad, "bad.py")
    assert len(found) == 9, found
    for text in ("_same_features", "no_such_name", "import *", "BackbonePreprocess", "NO_SUCH_CONSTANT", "nothing_here",
                 "`._extract`", "`._forward`", "through getattr"):
        assert any(text in problem for problem in found), (text, found)
    assert problems("from tlcore.extraction import FeatureExtractor\nfrom tlcore import features\n"
                    "features.IN_MEMORY_BYTES\n") == []
    assert problems("class Mine:\n    def go(self):\n        return self._socket\n") == []


# Slow: each benchmark runs on a tiny input -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_runs_on_a_tiny_input(name, tmp_path):
    asset("weights", MOBILENET_WEIGHTS)
    asset("datasets", "horse-or-human")
    asset("datasets", "flowers")
    folders = {key: tmp_path / key.lower() for key in ("TLCORE_HOME", "TLCORE_RUNS", "TMPDIR")}
    for folder in folders.values():
        folder.mkdir()
    # TMPDIR too: the benchmarks' scratch folders and Keras caches are made under it, so pytest removes them.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **{key: str(folder) for key, folder in folders.items()}}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    seconds = time.perf_counter() - start
    output = f"--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"{name} --smoke exited with {done.returncode} after {seconds:.0f}s\n{output}"
    missing = [pattern for pattern in FIGURES[name] if not re.search(pattern, done.stdout, re.MULTILINE)]
    assert not missing, f"{name} --smoke did not print {missing}\n{output}"
