"""Private workspaces: each visitor's runs, chosen dataset and model, behind a secret token.

A workspace is named by a secret token (kept in the address bar); its folder is named by a hash
of that token, so a folder's or a run's name grants nothing. Every run of a workspace lives in
its folder, under `$TLCORE_RUNS/workspaces/`. A teacher, holding the key the server was started
with (`$TLCORE_TEACHER_KEY`), sees every workspace's runs and publishes datasets to the class.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from tlcore.runs import RunInfo, default_runs_dir, list_runs, read_json, write_json

WORKSPACES_FOLDER = "workspaces"
STATE_FILE = "workspace.json"
PUBLISHED_FILE = "published.json"
TOKEN = re.compile(r"[A-Za-z0-9_-]{22,64}")
MAX_PUBLISHED = 50
MAX_NAME = 80


def new_token() -> str:
    """A fresh secret: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def valid_token(text: object) -> bool:
    return isinstance(text, str) and TOKEN.fullmatch(text) is not None


def private() -> bool:
    """False when `$TLCORE_WORKSPACES` is `off`: one shared space, for a personal machine."""
    return os.environ.get("TLCORE_WORKSPACES", "on").strip().lower() not in ("off", "0", "no", "false")


@dataclass(frozen=True)
class Workspace:
    """One visitor's space. `token` is the secret; `key` names its folder and is safe to show."""

    token: str
    runs_root: Path
    shared: bool = False

    @classmethod
    def open(cls, token: str, runs_root: str | Path | None = None) -> "Workspace":
        """The workspace of `token` (made on first use).

        Raises:
            ValueError: `token` is not a token this module makes.
        """
        if not valid_token(token):
            raise ValueError("not a workspace token")
        return cls(token, Path(runs_root) if runs_root is not None else default_runs_dir())

    @property
    def key(self) -> str:
        return "shared" if self.shared else hashlib.sha256(self.token.encode()).hexdigest()[:24]

    @property
    def label(self) -> str:
        """A short name a teacher can tell workspaces apart by."""
        return f"workspace {self.key[:6]}"

    @property
    def runs_dir(self) -> Path:
        return self.runs_root if self.shared else self.runs_root / WORKSPACES_FOLDER / self.key

    def owns(self, run_dir: str | Path) -> bool:
        """True when `run_dir` is one of this workspace's runs (a name elsewhere is not); the shared space owns all."""
        if self.shared:
            return True
        try:
            return Path(run_dir).resolve().parent == self.runs_dir.resolve()
        except OSError:
            return False

    def runs(self) -> list[RunInfo]:
        return list_runs(self.runs_dir)

    # What a new tab of the same workspace finds again -----------------------------------------

    def remember(self, **values) -> None:
        """Keeps small JSON-able values (the chosen dataset, the model settings) for the workspace's other tabs."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        state = self.remembered()
        state.update(values)
        write_json(self.runs_dir / STATE_FILE, state)

    def remembered(self) -> dict:
        data = read_json(self.runs_dir / STATE_FILE, {})
        return data if isinstance(data, dict) else {}


def shared(runs_root: str | Path | None = None) -> Workspace:
    """With workspaces off: everything in `$TLCORE_RUNS` itself, for everyone."""
    return Workspace("", Path(runs_root) if runs_root is not None else default_runs_dir(), shared=True)


def all_workspaces(runs_root: str | Path | None = None) -> dict[str, list[RunInfo]]:
    """Every workspace's runs by the workspace's key (what a teacher sees), newest first."""
    root = (Path(runs_root) if runs_root is not None else default_runs_dir()) / WORKSPACES_FOLDER
    if not root.is_dir():
        return {}
    return {folder.name: list_runs(folder) for folder in sorted(root.iterdir()) if folder.is_dir()}


# The teacher ---------------------------------------------------------------------------------

def teacher_key_set() -> bool:
    return bool(os.environ.get("TLCORE_TEACHER_KEY", "").strip())


def is_teacher_key(text: object) -> bool:
    """True when `text` is the key the server was started with (compared in constant time)."""
    expected = os.environ.get("TLCORE_TEACHER_KEY", "").strip()
    if not expected or not isinstance(text, str):
        return False
    return hmac.compare_digest(text.strip().encode()[:256], expected.encode())


@dataclass(frozen=True)
class Published:
    """A dataset the teacher published to the class: its name and its unpacked folder."""

    name: str
    source: str


def published(work_dir: str | Path) -> list[Published]:
    """The datasets published to the class, in the order they were published."""
    data = read_json(Path(work_dir) / PUBLISHED_FILE, [])
    found = []
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("source"), str):
            if Path(entry["source"]).is_dir():
                found.append(Published(entry["name"][:MAX_NAME], entry["source"]))
    return found


def publish(work_dir: str | Path, name: str, source: str | Path) -> list[Published]:
    """Offers the dataset folder `source` to every workspace as `name` (again: moved to the end)."""
    name = " ".join(str(name).split())[:MAX_NAME] or "dataset"
    source = str(Path(source).resolve())
    entries = [p for p in published(work_dir) if p.source != source][-(MAX_PUBLISHED - 1):]
    entries.append(Published(name, source))
    write_json(Path(work_dir) / PUBLISHED_FILE, [p.__dict__ for p in entries])
    return entries


def unpublish(work_dir: str | Path, source: str | Path) -> list[Published]:
    source = str(Path(source).resolve())
    entries = [p for p in published(work_dir) if p.source != source]
    write_json(Path(work_dir) / PUBLISHED_FILE, [p.__dict__ for p in entries])
    return entries


__all__ = [
    "Published", "Workspace", "all_workspaces", "is_teacher_key", "new_token", "private",
    "publish", "published", "shared", "teacher_key_set", "unpublish", "valid_token",
]
