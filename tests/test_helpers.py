"""The stderr allow-list: known harmless lines pass, anything else (ours, a banner, a traceback) is reported."""

from tests.helpers import unexpected_stderr


def test_harmless_lines_pass_and_everything_else_is_unexpected():
    stderr = (
        "[W1207 04:14:22.123456 1234 NNPACK.cpp:61] Could not initialize NNPACK! Reason: Unsupported hardware.\n"
        "/x/.venv/lib/python3.11/site-packages/dep/mod.py:12: DeprecationWarning: old_call is deprecated\n"
        "  old_call()\n"
        "\n"
        "error: something went wrong\n"
        "/work/main/tasks/core/storage.py:3: DeprecationWarning: ours is not harmless\n"
        "  ours()\n"
        "Traceback (most recent call last):\n")
    assert unexpected_stderr(stderr) == [
        "error: something went wrong", "/work/main/tasks/core/storage.py:3: DeprecationWarning: ours is not harmless",
        "  ours()", "Traceback (most recent call last):"]
    assert unexpected_stderr("") == []
