"""One error type for bad input: a single paragraph naming the problem and the fix."""
import difflib


class UserError(Exception):
    """Raised for bad input; the CLI prints it as one paragraph, without a traceback."""


def unknown(kind: str, name: str, valid) -> UserError:
    """An 'unknown X' error that lists the valid names and a close match."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"Unknown {kind} '{name}'.{hint} Valid {kind}s: {', '.join(valid)}.")
