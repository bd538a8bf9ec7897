"""One line saying which device fit a report's figures used: the device, the machine and how old it is."""

from __future__ import annotations

from rich.text import Text

from planner.device_fit_file import DeviceFitFile


def age_text(age_s: float | None) -> str:
    if age_s is None:
        return "at an unrecorded time"
    for unit, seconds in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if age_s >= seconds:
            n = int(age_s // seconds)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def device_fit_line(fit: DeviceFitFile) -> Text:
    machine = fit.machine.get("hostname") or fit.machine.get("id") or "an unrecorded machine"
    return Text(f"Device fit: {fit.device} constants measured on {machine} {age_text(fit.age_s())} ({fit.path}).",
                style="dim")
