"""Glue between the serving settings (``IMGCLF_MONITOR_*``) and the monitoring recorder.

Kept in ``serving`` so that :mod:`imgclf.monitoring` knows nothing of the API's
environment variables: the recorder takes a plain :class:`MonitorConfig`, and the
operator's misconfiguration is reported here, with the variable's name.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from imgclf.monitoring.recorder import Monitor, MonitorConfig
from imgclf.serving.settings import Settings, SettingsError


def open_monitor(settings: Settings, telemetry: Any | None = None) -> Monitor | None:
    """The recorder the settings ask for (None when ``IMGCLF_MONITOR_DB`` is unset).

    A database that cannot be opened stops the server at startup with the variable's
    name: the operator asked for monitoring, and silently serving without it would
    leave a gap nobody notices until the drift report is empty.
    """
    if settings.monitor_db is None:
        return None
    config = MonitorConfig(
        db=settings.monitor_db,
        max_rows=settings.monitor_max_rows,
        sample_dir=settings.sample_dir,
        sample_rate=settings.sample_rate,
        sample_max_bytes=settings.sample_max_bytes,
    )
    try:
        return Monitor(config, telemetry)
    except (sqlite3.Error, OSError) as exc:
        raise SettingsError(
            f"IMGCLF_MONITOR_DB={settings.monitor_db} (or IMGCLF_SAMPLE_DIR) cannot be used: {exc}"
        ) from None
