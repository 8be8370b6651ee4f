"""Triton's log settings: checked by name and type, a bad change changes nothing, and the level they set."""

from __future__ import annotations

import logging

import pytest

from deployments.errors import InferenceError
from deployments.observability.log_settings import DEFAULTS, level, updated


def test_changes_apply_by_name_and_leave_the_rest():
    settings = updated(DEFAULTS, {"log_verbose_level": 2, "log_info": False})
    assert settings == {**DEFAULTS, "log_verbose_level": 2, "log_info": False}
    assert level(settings) == logging.DEBUG
    assert level({**DEFAULTS, "log_info": False}) == logging.WARNING
    assert level({**DEFAULTS, "log_info": False, "log_warning": False, "log_error": False}) > logging.CRITICAL
    assert updated(DEFAULTS, {"log_file": ""}) == DEFAULTS  # unchanged: accepted


@pytest.mark.parametrize("changes, words", [
    ({"log_verbose_level": -1}, "integer >= 0"),
    ({"log_verbose_level": True}, "integer >= 0"),
    ({"log_info": "yes"}, "must be a boolean"),
    ({"log_file": "/tmp/x.log"}, "cannot be set at run time"),
    ({"log_format": "ISO8601"}, "is not served"),
    ({"log_colour": True}, "unknown log setting 'log_colour'"),
])
def test_bad_changes_are_refused_by_name(changes, words):
    with pytest.raises(InferenceError, match=words) as info:
        updated(DEFAULTS, changes)
    assert info.value.http_status == 400
