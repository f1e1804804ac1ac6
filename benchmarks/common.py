"""Shared helpers of the benchmarks: offline assets, a private Keras cache, timing and tables."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
DATASETS = ASSETS / "datasets"
MOBILENET_WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def private_keras_home() -> Path:
    """Points KERAS_HOME at a new temporary folder whose cache holds the MobileNetV2 (alpha 0.35) weights.

    Must run before Keras builds a backbone. The weights are linked, not copied, when the file
    system allows it.
    """
    weights = ASSETS / "weights" / MOBILENET_WEIGHTS
    if not weights.is_file():
        sys.exit(f"Missing offline weights: {weights}")
    home = Path(tempfile.mkdtemp(prefix="tl-bench-keras-"))
    (home / "models").mkdir()
    target = home / "models" / MOBILENET_WEIGHTS
    try:
        target.symlink_to(weights)
    except OSError:
        shutil.copy(weights, target)
    os.environ["KERAS_HOME"] = str(home)
    return home


def scratch_dir(name: str) -> Path:
    """A new temporary folder for runs, caches and generated images."""
    return Path(tempfile.mkdtemp(prefix=f"tl-bench-{name}-"))


@contextmanager
def stopwatch(results: dict, name: str, cpu: dict | None = None):
    """Stores the wall-clock seconds of the block in `results[name]`, and its CPU seconds in `cpu[name]`.

    CPU seconds count every thread of this process; on a machine shared with other work they
    vary much less than wall-clock seconds.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        results[name] = time.perf_counter() - start
        if cpu is not None:
            cpu[name] = time.process_time() - start_cpu


def peak_rss_mb() -> float:
    """The process' peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**2


def package_version(module: str, *distributions: str) -> str:
    """A package's version, without importing it when it is not loaded yet (TensorFlow takes seconds)."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        return loaded.__version__
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return importlib.import_module(module).__version__


def machine_line() -> str:
    tensorflow = package_version("tensorflow", "tensorflow-cpu", "tensorflow")
    keras = package_version("keras", "keras")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, TensorFlow {tensorflow}, Keras {keras}, "
        f"load average {load}"
    )


def print_table(headers: list[str], rows: list[list], title: str | None = None) -> None:
    """Prints rows as an aligned plain-text table; numbers right-aligned."""
    rows = [list(row) + [None] * (len(headers) - len(row)) for row in rows]  # short rows end blank
    text = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] in (None, "") for row in rows) for i in range(len(headers))]
    if title:
        print(f"\n{title}")
    line = "  ".join(h.rjust(w) if n else h.ljust(w) for h, w, n in zip(headers, widths, numeric))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in text:
        print("  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)))
    sys.stdout.flush()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value and abs(value) < 0.001:
            return f"{value:.1e}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def subset(dataset, per_class: int | None):
    """The dataset with at most `per_class` training and a proportional share of validation images per class.

    The splits hold `tlcore.dataset.Item`s, which are kept whole (their digests name the cached features).
    """
    if not per_class:
        return dataset
    import dataclasses

    def cap(items, limit):
        kept, seen = [], {}
        for item in items:
            if seen.get(item.label, 0) < limit:
                kept.append(item)
                seen[item.label] = seen.get(item.label, 0) + 1
        return tuple(kept)

    ratio = len(dataset.validation) / max(1, len(dataset.train))
    return dataclasses.replace(
        dataset, train=cap(dataset.train, per_class), validation=cap(dataset.validation, max(1, round(per_class * ratio)))
    )


def small_copy(source: Path, per_class: int, name: str = "smoke") -> Path:
    """A new folder with the first `per_class` images (by name) of each class folder of `source`.

    For `--smoke` runs: checking a tiny folder takes a moment, checking the whole dataset does not.
    """
    source = Path(source)
    if not source.is_dir():
        sys.exit(f"Missing offline dataset: {source}")
    target = scratch_dir(name) / source.name
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))[:per_class]
        (target / folder.name).mkdir(parents=True)
        for image in images:
            shutil.copy(image, target / folder.name / image.name)
    return target


def parse_with_smoke(parser, smoke_defaults, argv=None):
    """Parses the command line; with `--smoke`, `smoke_defaults()` replaces the defaults first.

    `--smoke` runs the benchmark on a tiny input, only to check that it still works: its figures
    mean nothing. Flags given explicitly still win over the smoke defaults.
    """
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny, quick run that only checks the benchmark works (its figures mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**smoke_defaults())
        args = parser.parse_args(argv)
    return args
