"""Five-field cron expressions and their fire times in a time zone; pure (no I/O, no clock).

Schedules start runs durably, so the daemon must answer two questions without ever reading the wall
clock itself: "when is the next tick after T?" and "what was the last tick at or before T?" (a tick
missed while the daemon was down fires once at start-up). Both are answered here from the
expression alone, which keeps the durable part testable with a fake clock.

Semantics (those of Vixie cron, with the choices spelled out):

- Fields: minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or JAN-DEC, day-of-week 0-7 or
  SUN-SAT (0 and 7 are Sunday). Each field is `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or
  `a/n` (= `a-max/n`), or a comma-separated list of those. Names are case-insensitive.
- Day-of-month and day-of-week: when both are restricted a day matches if *either* matches; when one
  is `*` only the other counts. A field counts as restricted unless it is written `*` (or `*/1`), as
  in croniter and robfig/cron; Vixie cron also treats `*/n` as unrestricted, which surprises.
- Macros: @yearly (@annually), @monthly, @weekly, @daily (@midnight), @hourly.
- Daylight saving time: the expression is evaluated on the zone's wall clock. A wall time that does
  not exist (the spring-forward gap) is skipped; one that happens twice (the autumn fold) fires once,
  at its first occurrence.
- Times come back as aware datetimes in UTC, on whole minutes.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["CronError", "CronSchedule", "MACROS"]

MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTH_NAMES = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAY_NAMES = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
# The most days each month can have (February counts its leap day): an expression that can only
# name days beyond these never fires, and is rejected at parse time instead of searched for forever.
_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# How far a search runs before giving up. A valid expression fires at least every 8 years (Feb 29
# skips 2100), so 12 years is never reached in practice; it bounds the work for any input.
SEARCH_YEARS = 12
_MINUTE = timedelta(minutes=1)


class CronError(ValueError):
    """An expression or time zone that cannot be used; the message names the field and the token."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTH_NAMES),
    _Field("day-of-week", 0, 7, _DAY_NAMES),
)


def _parse_value(spec: _Field, token: str, text: str, fail: _Fail) -> int:
    upper = text.upper()
    if spec.names is not None and upper in spec.names:
        return spec.names[upper]
    if not (text.isascii() and text.isdigit()):
        hint = f" (a number {spec.low}-{spec.high}" + (" or a 3-letter name)" if spec.names else ")")
        raise fail(spec, token, f"{text!r} is not a valid value{hint}")
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise fail(spec, token, f"{value} is out of range {spec.low}-{spec.high}")
    return value


class _Fail:
    """Builds CronErrors that quote the whole expression, the field and the offending token."""

    def __init__(self, expression: str) -> None:
        self.expression = expression

    def __call__(self, spec: _Field, token: str, reason: str) -> CronError:
        return CronError(f"invalid cron expression {self.expression!r}: {spec.name} field, token {token!r}: {reason}")


def _parse_field(spec: _Field, text: str, fail: _Fail) -> frozenset[int]:
    values: set[int] = set()
    for token in text.split(","):
        if not token:
            raise fail(spec, text, "empty list element")
        base, slash, step_text = token.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) < 1:
                raise fail(spec, token, f"step {step_text!r} must be a whole number of at least 1")
            step = int(step_text)
        if base == "*":
            low, high = spec.low, spec.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low = _parse_value(spec, token, first, fail)
            high = _parse_value(spec, token, last, fail)
            if spec.name == "day-of-week" and high == 0 and low > 0:
                high = 7  # FRI-SUN: Sunday closes the week
            if low > high:
                raise fail(spec, token, f"range start {low} is after its end {high}")
        else:
            low = _parse_value(spec, token, base, fail)
            high = spec.high if slash else low  # `a/n` means `a-max/n`
        values.update(range(low, high + 1, step))
    if spec.name == "day-of-week" and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):  # OSError: a name too long for a file
        raise CronError(f"unknown time zone {timezone[:100]!r} (use an IANA name such as 'Europe/Berlin')") from None


def _ceil(values: tuple[int, ...], x: int) -> int | None:
    """The smallest allowed value >= x, or None."""
    i = bisect_left(values, x)
    return values[i] if i < len(values) else None


def _floor(values: tuple[int, ...], x: int) -> int | None:
    """The largest allowed value <= x, or None."""
    i = bisect_right(values, x)
    return values[i - 1] if i else None


@dataclass(frozen=True)
class CronSchedule:
    """A parsed expression in a time zone. Construct with `parse` (or directly: both validate)."""

    expression: str
    timezone: str = "UTC"
    _minutes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _hours: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _doms: frozenset[int] = field(init=False, repr=False, compare=False)
    _months: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _dows: frozenset[int] = field(init=False, repr=False, compare=False)
    _dom_star: bool = field(init=False, repr=False, compare=False)
    _dow_star: bool = field(init=False, repr=False, compare=False)
    _tz: tzinfo = field(init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> CronSchedule:
        """Validate and normalise whitespace, so equal schedules compare (and hash) equal."""
        if isinstance(expression, str) and isinstance(timezone, str):
            return cls(" ".join(expression.split()), timezone.strip())
        return cls(expression, timezone)  # __post_init__ reports the wrong type

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str):
            raise CronError(f"a cron expression must be a string, got {type(self.expression).__name__}")
        if not isinstance(self.timezone, str):
            raise CronError(f"a time zone must be a string, got {type(self.timezone).__name__}")
        fail = _Fail(self.expression)
        text = self.expression.strip()
        if text.startswith("@"):
            macro = MACROS.get(text.lower())
            if macro is None:
                raise CronError(
                    f"invalid cron expression {self.expression!r}: unknown macro (use one of {', '.join(MACROS)})"
                )
            text = macro
        parts = text.split()
        if len(parts) != 5:
            raise CronError(
                f"invalid cron expression {self.expression!r}: expected 5 fields "
                f"(minute hour day-of-month month day-of-week), got {len(parts)}"
            )
        sets = [_parse_field(spec, part, fail) for spec, part in zip(_FIELDS, parts, strict=True)]
        minutes, hours, doms, months, dows = sets
        dom_star = parts[2] in ("*", "*/1")
        dow_star = parts[4] in ("*", "*/1")
        if dow_star and not dom_star and not any(d <= _MAX_DAYS[m - 1] for m in months for d in doms):
            raise fail(_FIELDS[2], parts[2], f"never occurs in month(s) {parts[3]}, so the schedule never fires")
        set_ = object.__setattr__
        set_(self, "_minutes", tuple(sorted(minutes)))
        set_(self, "_hours", tuple(sorted(hours)))
        set_(self, "_doms", doms)
        set_(self, "_months", tuple(sorted(months)))
        set_(self, "_dows", dows)
        set_(self, "_dom_star", dom_star)
        set_(self, "_dow_star", dow_star)
        set_(self, "_tz", _zone(self.timezone))

    # -- public queries ---------------------------------------------------------------------------
    def next_after(self, after: datetime) -> datetime:
        """The first fire time strictly after `after`, in UTC. Raises CronError if none within SEARCH_YEARS."""
        anchor = self._anchor(after)
        horizon = min(anchor.year + SEARCH_YEARS, datetime.max.year)
        try:
            wall = anchor.replace(second=0, microsecond=0) + _MINUTE
            while (candidate := self._next_wall(wall, horizon)) is not None:
                fire = self._resolve(candidate)
                if fire is not None and fire > after:
                    return fire
                wall = candidate + _MINUTE  # in a gap, or the second pass of a fold
        except OverflowError:  # the end of the calendar
            pass
        raise CronError(
            f"{self.expression!r} ({self.timezone}) does not fire within {SEARCH_YEARS} years after {after.isoformat()}"
        )

    def fires_between(self, start: datetime, end: datetime, limit: int = 1000) -> list[datetime]:
        """Fire times in (start, end], oldest first, at most `limit` of them."""
        _require_aware(end)
        found: list[datetime] = []
        moment = start
        while len(found) < limit:
            try:
                moment = self.next_after(moment)
            except CronError:
                break
            if moment > end:
                break
            found.append(moment)
        return found

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last fire time <= `moment`, in UTC, or None if none within SEARCH_YEARS before it.

        Start-up uses it to fire a tick missed during downtime exactly once: compare it with the last
        tick recorded as fired.
        """
        anchor = self._anchor(moment)
        horizon = max(anchor.year - SEARCH_YEARS, datetime.min.year)
        try:
            wall = anchor.replace(second=0, microsecond=0)
            while (candidate := self._prev_wall(wall, horizon)) is not None:
                fire = self._resolve(candidate)
                if fire is not None and fire <= moment:
                    return fire
                wall = candidate - _MINUTE
        except OverflowError:  # the start of the calendar
            pass
        return None

    # -- internals ----------------------------------------------------------------------------------
    def _anchor(self, moment: datetime) -> datetime:
        """`moment` on the zone's wall clock (naive), moved past the fold when it is a repeated hour.

        Fire instants are the first occurrences of matching wall times, which rise with the wall
        time. A moment in the second pass through a repeated hour has already seen every first
        occurrence up to the end of that hour, so the search starts there (shifted by the fold's size).
        """
        _require_aware(moment)
        local = moment.astimezone(self._tz)
        wall = local.replace(tzinfo=None, fold=0)
        if local.fold:
            first = local.replace(fold=0).utcoffset()
            second = local.utcoffset()
            if first is not None and second is not None and first > second:
                wall += first - second
        return wall

    def _resolve(self, wall: datetime) -> datetime | None:
        """The UTC instant of a wall time's first occurrence, or None if the wall time does not exist."""
        instant = wall.replace(tzinfo=self._tz, fold=0).astimezone(UTC)
        if instant.astimezone(self._tz).replace(tzinfo=None) != wall:
            return None  # in a spring-forward gap
        return instant

    def _day_matches(self, year: int, month: int, day: int) -> bool:
        dom_ok = day in self._doms
        if self._dom_star and self._dow_star:
            return True
        dow_ok = (calendar.weekday(year, month, day) + 1) % 7 in self._dows
        if self._dom_star:
            return dow_ok
        if self._dow_star:
            return dom_ok
        return dom_ok or dow_ok

    def _next_wall(self, start: datetime, horizon: int) -> datetime | None:
        """The first matching wall time >= start (naive), skipping whole months, days and hours at a time."""
        y, mo, d, h, mi = start.year, start.month, start.day, start.hour, start.minute
        while y <= horizon:
            if mo not in self._months:
                nxt = _ceil(self._months, mo)
                if nxt is None:
                    y, mo, d, h, mi = y + 1, self._months[0], 1, 0, 0
                    continue
                mo, d, h, mi = nxt, 1, 0, 0
            dim = calendar.monthrange(y, mo)[1]
            while d <= dim and not self._day_matches(y, mo, d):
                d, h, mi = d + 1, 0, 0
            if d > dim:
                mo, d, h, mi = mo + 1, 1, 0, 0
                if mo > 12:
                    y, mo = y + 1, 1
                continue
            hour = _ceil(self._hours, h)
            if hour is None:
                d, h, mi = d + 1, 0, 0
                continue
            if hour != h:
                h, mi = hour, 0
            minute = _ceil(self._minutes, mi)
            if minute is None:
                h, mi = h + 1, 0
                continue
            return datetime(y, mo, d, h, minute)
        return None

    def _prev_wall(self, start: datetime, horizon: int) -> datetime | None:
        """The last matching wall time <= start (naive): `_next_wall` run backwards."""
        y, mo, d, h, mi = start.year, start.month, start.day, start.hour, start.minute
        while y >= horizon:
            if mo not in self._months:
                prev = _floor(self._months, mo)
                if prev is None:
                    y, mo, d, h, mi = y - 1, self._months[-1], 31, 23, 59
                    continue
                mo, d, h, mi = prev, 31, 23, 59
            d = min(d, calendar.monthrange(y, mo)[1])
            while d >= 1 and not self._day_matches(y, mo, d):
                d, h, mi = d - 1, 23, 59
            if d < 1:
                mo, d, h, mi = mo - 1, 31, 23, 59
                if mo < 1:
                    y, mo = y - 1, 12
                continue
            hour = _floor(self._hours, h)
            if hour is None:
                d, h, mi = d - 1, 23, 59
                continue
            if hour != h:
                h, mi = hour, 59
            minute = _floor(self._minutes, mi)
            if minute is None:
                h, mi = h - 1, 59
                continue
            return datetime(y, mo, d, h, minute)
        return None


def _require_aware(moment: datetime) -> None:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"an aware datetime is required (with tzinfo), got {moment!r}")
