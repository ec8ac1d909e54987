"""Stand-ins for the prometheus_client library, put first on a daemon's
PYTHONPATH: missing, too old, or of a given version."""

from __future__ import annotations

from pathlib import Path

MISSING = "raise ImportError('not installed (test)')\n"


def fake_library(folder: Path, init: str, version: str | None) -> Path:
    """A prometheus_client package of ``init`` (and, with a ``version``, its
    metadata) in ``folder``, for PYTHONPATH."""
    (folder / "prometheus_client").mkdir(parents=True)
    (folder / "prometheus_client" / "__init__.py").write_text(init)
    if version is not None:
        meta = folder / f"prometheus_client-{version}.dist-info"
        meta.mkdir()
        (meta / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: prometheus_client\nVersion: {version}\n")
    return folder
