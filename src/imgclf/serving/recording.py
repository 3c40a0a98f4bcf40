"""Glue between the serving settings (``IMGCLF_MONITOR_*``) and the monitoring recorder.

Kept in ``serving`` so that :mod:`imgclf.monitoring` knows nothing of the API's
environment variables: the recorder takes a plain :class:`MonitorConfig`, and the
operator's misconfiguration is reported here, with the variable's name.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from imgclf.monitoring.recorder import Monitor, MonitorConfig
from imgclf.monitoring.shards import ShardError
from imgclf.monitoring.shipping import ShipConfig
from imgclf.serving.settings import Settings, SettingsError


def open_monitor(settings: Settings, telemetry: Any | None = None) -> Monitor | None:
    """The recorder the settings ask for (None when ``IMGCLF_MONITOR_DB`` is unset).

    A database that cannot be opened stops the server at startup with the variable's
    name: the operator asked for monitoring, and silently serving without it would
    leave a gap nobody notices until the drift report is empty.
    """
    if settings.monitor_db is None and settings.monitor_url is None:
        return None
    ship = None
    if settings.monitor_url is not None:  # shards shipped off the replica (autoscaling)
        ship = ShipConfig(
            url=settings.monitor_url,
            spool=settings.monitor_spool or default_spool(settings),
            shard_s=settings.monitor_shard_s,
            shard_rows=settings.monitor_shard_rows,
            replica=settings.monitor_replica,
            drain_s=settings.monitor_drain_s,
            max_bytes=settings.monitor_spool_max_bytes,
        )
    config = MonitorConfig(
        db=settings.monitor_db,
        ship=ship,
        max_rows=settings.monitor_max_rows,
        sample_dir=settings.sample_dir,
        sample_rate=settings.sample_rate,
        sample_max_bytes=settings.sample_max_bytes,
    )
    try:
        return Monitor(config, telemetry)
    except (sqlite3.Error, OSError, ShardError) as exc:
        if ship is not None:
            raise SettingsError(
                f"IMGCLF_MONITOR_URL={ship.url} (spool {ship.spool}, or IMGCLF_SAMPLE_DIR) "
                f"cannot be used: {exc}"
            ) from None
        raise SettingsError(
            f"IMGCLF_MONITOR_DB={settings.monitor_db} (or IMGCLF_SAMPLE_DIR) cannot be used: {exc}"
        ) from None


def default_spool(settings: Settings) -> Path:
    """Beside ``IMGCLF_MONITOR_DB`` when set (the image's volume), else the temp folder."""
    if settings.monitor_db is not None:
        return settings.monitor_db.parent / "spool"
    return Path(tempfile.gettempdir()) / "imgclf-spool"
