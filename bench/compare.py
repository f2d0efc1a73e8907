"""``--compare REV``: the relay of another git revision, measured in the same run.

The harness checks REV out into a temporary *detached* git worktree and
starts a second relay pair (``relay@<short>``) with ``PYTHONPATH=<worktree>``
(and the worktree as working directory), so ``twistd`` imports ``mterelay``
and ``twisted/plugins/mterelay_plugin.py`` from REV while every dependency
comes from the shared venv.  Both relay pairs are then started through
``bench/relay_launcher.py``, which writes, from inside the relay process,
the files it imported them from (one ``bench-launcher:`` line in the log);
the harness refuses the target when they are not the worktree's.

The only git commands ever run are ``worktree add --detach``, ``worktree
remove --force`` and ``worktree prune``; the commit is read from the
worktree's own files, never with another git command.  :class:`Worktree`
is a context manager: the worktree is removed at the end, also after an
error or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: argv -> (exit status, stdout and stderr together).
Runner = Callable[[list[str]], tuple[int, str]]

#: What relay_launcher.py prints before twistd starts (then a JSON object).
LAUNCHER_MARKER = "bench-launcher:"

_HASH = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
SHORT = 7


class WorktreeError(RuntimeError):
    """``git worktree add`` failed (unknown revision, not a repository, ...)."""


def check_rev(text: str) -> str:
    """``--compare`` argument check: a revision git will not take for an option."""
    rev = text.strip()
    if not rev:
        raise ValueError("the revision is empty")
    if rev.startswith("-"):
        raise ValueError(f"{rev!r} looks like an option, not a git revision")
    if any(ch.isspace() or ord(ch) < 32 for ch in rev):
        raise ValueError(f"{rev!r} contains white space or control characters")
    return rev


def add_command(repo: Path, path: Path, rev: str) -> list[str]:
    return ["git", "-C", str(repo), "worktree", "add", "--detach", str(path), rev]


def remove_command(repo: Path, path: Path) -> list[str]:
    return ["git", "-C", str(repo), "worktree", "remove", "--force", str(path)]


def prune_command(repo: Path) -> list[str]:
    return ["git", "-C", str(repo), "worktree", "prune"]


def git_runner(argv: list[str]) -> tuple[int, str]:
    """Run one git command; its status and its output (stdout and stderr)."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return 127, str(error)
    return done.returncode, done.stdout.decode("utf-8", "replace")


def read_head(worktree: Path) -> str | None:
    """The commit a detached worktree is at, read from its files (no git command).

    A worktree's ``.git`` is a file ``gitdir: <repo>/.git/worktrees/<name>``
    whose ``HEAD`` holds the commit hash when detached.
    """
    try:
        text = (worktree / ".git").read_text("utf-8").strip()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    gitdir = Path(text[len("gitdir:"):].strip())
    if not gitdir.is_absolute():
        gitdir = worktree / gitdir
    try:
        head = (gitdir / "HEAD").read_text("utf-8").strip()
    except OSError:
        return None
    return head if _HASH.fullmatch(head) else None


def parse_subject(output: str) -> str:
    """The commit subject from ``git worktree add``'s ``HEAD is now at <hash> <subject>``."""
    for line in output.splitlines():
        found = re.match(r"\s*HEAD is now at [0-9a-f]+ (.*)$", line)
        if found:
            return found.group(1).strip()
    return ""


def target_name(short: str) -> str:
    return f"relay@{short}"


def target_label(short: str) -> str:
    return f"relay @ {short}"


def pythonpath_env(worktree: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """PYTHONPATH with the worktree first (anything already set after it)."""
    current = (os.environ if environ is None else environ).get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(worktree), current) if p)}


def temporary_parent() -> Path:
    """The directory the worktree goes in (removed with it), under $TMPDIR."""
    return Path(tempfile.mkdtemp(prefix="mterelay-bench-compare-"))


@dataclass
class Worktree:
    """A temporary detached worktree of ``rev``; ``close()`` removes it (idempotent)."""

    repo: Path
    rev: str
    runner: Runner = git_runner
    make_parent: Callable[[], Path] = field(default=lambda: temporary_parent())
    parent: Path | None = None
    path: Path | None = None
    commit: str = ""
    subject: str = ""
    added: bool = False
    closed: bool = False
    #: Every git command run, with its status: recorded in the results JSON.
    commands: list[dict[str, Any]] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.commit[:SHORT]

    def _run(self, argv: list[str]) -> tuple[int, str]:
        code, output = self.runner(argv)
        self.commands.append({"argv": argv, "status": code})
        return code, output

    def add(self) -> None:
        """``git worktree add --detach``; WorktreeError (and nothing left) when it fails."""
        self.parent = self.make_parent()
        self.path = self.parent / "worktree"
        code, output = self._run(add_command(self.repo, self.path, self.rev))
        if code != 0:
            self.close()
            raise WorktreeError(f"git worktree add of {self.rev!r} failed (status {code}): "
                                f"{output.strip()[-500:]}")
        self.added = True
        commit = read_head(self.path)
        if commit is None:
            self.close()
            raise WorktreeError(f"the worktree of {self.rev!r} at {self.path} has no readable "
                                "detached HEAD")
        self.commit = commit
        self.subject = parse_subject(output)

    def close(self) -> list[str]:
        """Remove the worktree (``remove --force``, the directory, ``prune``); problems found.

        Signals are blocked meanwhile, so a second Ctrl-C cannot leave a
        half-removed worktree registered in the repository.
        """
        if self.closed:
            return []
        self.closed = True
        problems = []
        stopping = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
        try:
            if self.path is not None and (self.added or self.path.exists()):
                code, output = self._run(remove_command(self.repo, self.path))
                if code != 0 and self.added:
                    problems.append(f"git worktree remove: {output.strip()[-300:]}")
            if self.parent is not None:
                shutil.rmtree(self.parent, ignore_errors=True)
            if self.parent is not None:
                code, output = self._run(prune_command(self.repo))
                if code != 0:
                    problems.append(f"git worktree prune: {output.strip()[-300:]}")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return problems

    def describe(self) -> dict[str, Any]:
        """The JSON record of the revision compared against."""
        return {"rev": self.rev, "commit": self.commit, "short": self.short,
                "subject": self.subject, "worktree": str(self.path) if self.path else None,
                "git_commands": list(self.commands)}

    def __enter__(self) -> "Worktree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- launcher evidence


def parse_launcher_line(log_text: str) -> dict[str, Any] | None:
    """The object relay_launcher.py wrote to the relay's log (the first one), or None."""
    for line in log_text.splitlines():
        at = line.find(LAUNCHER_MARKER)
        if at < 0:
            continue
        try:
            found = json.loads(line[at + len(LAUNCHER_MARKER):])
        except ValueError:
            continue
        if isinstance(found, dict):
            return found
    return None


def _inside(path: str | None, directory: Path) -> bool:
    if not path:
        return False
    try:
        Path(path).resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


def import_problem(found: Mapping[str, Any] | None, directory: Path) -> str | None:
    """Why a relay did not run the code under ``directory`` (None: it did)."""
    if found is None:
        return "the relay did not report where it imported mterelay from"
    for key, what in (("mterelay", "mterelay"), ("plugin", "the mterelay twistd plugin")):
        if found.get(f"{key}_error"):
            return f"importing {what} failed: {found[f'{key}_error']}"
        if not _inside(found.get(key), directory):
            return f"{what} was imported from {found.get(key)}, not from {directory}"
    return None


def evidence(found: Mapping[str, Any] | None) -> str:
    """Where the relay process said it imported mterelay and its twistd plugin from."""
    if not found:
        return "nothing (no bench-launcher line in its log)"
    return (f"mterelay.__file__ = {found.get('mterelay') or found.get('mterelay_error')} and "
            f"the twistd plugin from {found.get('plugin') or found.get('plugin_error')}")


_ERROR_LINE = re.compile(r"\b\w*(?:Error|Exception|Exit)\b|\berror\b|\brefus", re.IGNORECASE)


def error_summary(text: str, limit: int = 300) -> str:
    """The line of a failed start's output that says what went wrong.

    The last line naming an error (``ModuleNotFoundError: No module named
    'x'``, a configuration refusal), else the last non-empty line.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.search(line) and not line.startswith(("File ", "Traceback")):
            return line[:limit]
    return lines[-1][:limit] if lines else "no output"
