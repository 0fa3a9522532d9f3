"""``llm-dit doctor``: the model folders, the profile's memory and the library versions, checked
without loading a weight (``models/doctor.py``)."""

from __future__ import annotations

import json

from .common import config


def cmd_doctor(args) -> int:
    """Print the table; exit 0 when nothing is wrong, 1 when a check failed."""
    from ..models.doctor import diagnose

    report = diagnose(config(args))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 1 if report.problems else 0
