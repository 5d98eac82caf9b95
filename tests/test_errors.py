"""The one way an exception becomes part of a one-line message."""

from edsr.errors import one_line


def test_one_line_takes_the_reason_the_first_line_or_the_type():
    assert one_line(FileNotFoundError(2, "No such file or directory", "/tmp/x.png")) == (
        "No such file or directory"  # the message names the file itself
    )
    assert one_line(RuntimeError("bad  weights\n\nPlease file an issue at ...")) == "bad weights"
    assert one_line(KeyError()) == "KeyError"
    long = one_line(ValueError("x" * 500), limit=50)
    assert len(long) == 50 and long.endswith("...")
