"""Schedules: cron expressions that start workflow runs durably.

`cron` is the pure part (parsing and fire-time arithmetic); the durable part (which tick fired last,
firing a missed tick once at start-up) builds on it.
"""

from station_wf.schedules.cron import MACROS, CronError, CronSchedule

__all__ = ["MACROS", "CronError", "CronSchedule"]
