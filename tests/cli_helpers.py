"""Checks shared by the CLI tests: bad input is one `Error: ...` line and a non-zero exit, no traceback."""


def assert_one_line_error(r, *needles):
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit), r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for n in needles:
        assert n in lines[0], lines[0]
