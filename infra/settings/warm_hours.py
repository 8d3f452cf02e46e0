"""`warmHours` of a GPU class: when, and how many of its nodes are kept ready for jobs."""

import re
import zoneinfo
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo

from infra.settings.sections import _Section
from infra.settings.validation import _invalid

# Days as a schedule names them, in cron's order from Sunday (0) to Saturday (6).
DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_TIME = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


def _check_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise _invalid(
            "unknown time zone; allowed: an IANA time zone name, like Europe/Zurich or UTC"
        ) from None
    return name


def _check_time(text: str) -> str:
    if not _TIME.match(text):
        raise _invalid('allowed: a time of day as "HH:MM", 24-hour, like "08:00"')
    return text


def _check_days(days: tuple[str, ...]) -> tuple[str, ...]:
    twice = sorted({day for day in days if days.count(day) > 1}, key=DAYS.index)
    if twice:
        raise _invalid(f"{', '.join(twice)} given twice; allowed: each day once")
    return days


def _check_end(end: str, info: ValidationInfo) -> str:
    start = info.data.get("start")
    if start is not None and end <= start:
        raise _invalid(
            f"is not after start ({start}); allowed: a later time the same day (a window "
            "that runs past midnight is two windows: not supported)"
        )
    return end


Day = Literal["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
TimeOfDay = Annotated[str, AfterValidator(_check_time)]


class WarmHoursSettings(_Section):
    """Hours in which a GPU class keeps nodes ready (`warmHours`): from `start` to `end` on
    each of `days`, in `timezone`, `nodes` nodes each have room for one more job."""

    timezone: Annotated[str, AfterValidator(_check_timezone)]
    days: Annotated[tuple[Day, ...], Field(min_length=1), AfterValidator(_check_days)]
    start: TimeOfDay
    end: Annotated[TimeOfDay, AfterValidator(_check_end)]
    nodes: Annotated[int, Field(ge=1)] = 1

    @property
    def hours_per_week(self) -> float:
        """How long the nodes are kept ready in a week."""
        return len(self.days) * (_minutes(self.end) - _minutes(self.start)) / 60

    def cron(self, at: str) -> str:
        """The 5-field cron expression of `at` (start or end) on the schedule's days."""
        hours, minutes = at.split(":")
        days = ",".join(str(DAYS.index(day)) for day in self.days)
        return f"{int(minutes)} {int(hours)} * * {days}"


def _minutes(at: str) -> int:
    hours, minutes = at.split(":")
    return int(hours) * 60 + int(minutes)
