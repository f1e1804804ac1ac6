"""The `transfer-lab` command: serves the dashboard with Streamlit, from the installed package or this repository."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path


def app_folder() -> Path:
    """Where `app.py`, `pages/` and `.streamlit/config.toml` are: the installed copy, else the repository."""
    try:
        from importlib.resources import files

        installed = Path(str(files("transfer_lab_app")))
        if (installed / "app.py").is_file():
            return installed
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[1]


def streamlit_flags(folder: Path) -> list[str]:
    """The app's own Streamlit settings as command-line flags: Streamlit reads its config file only from
    the current folder, and the installed app is run from anywhere."""
    config = folder / ".streamlit" / "config.toml"
    if not config.is_file():
        return []
    flags = []
    for section, values in tomllib.loads(config.read_text()).items():
        for key, value in values.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            flags.append(f"--{section}.{key}={text}")
    return flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="transfer-lab",
        description="Serve the Transfer Lab dashboard: build an image classifier by transfer learning, with no code. "
        "Runs are kept in $TLCORE_RUNS (default: runs/ in the current folder), datasets and features in "
        "$TLCORE_HOME (default: ~/.tlcore).",
    )
    parser.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    parser.add_argument("--address", default=None, help="address to listen on (default: all)")
    parser.add_argument("--headless", action="store_true", help="do not open a browser")
    args, extra = parser.parse_known_args(argv)
    folder = app_folder()
    command = ["streamlit", "run", str(folder / "app.py"), *streamlit_flags(folder), f"--server.port={args.port}"]
    if args.address:
        command.append(f"--server.address={args.address}")
    if args.headless:
        command.append("--server.headless=true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from streamlit.web import cli as streamlit_cli

    sys.argv = [*command, *extra]
    return streamlit_cli.main()


if __name__ == "__main__":
    sys.exit(main())
