"""User-facing errors: one line naming the key, the value and what is allowed.

Everything the user can get wrong (a config value, a file, a CLI argument) is raised as a
:class:`UserError`. The CLI prints ``labbook: error: <message>`` and exits non-zero; the traceback
only appears when ``HYDRA_FULL_ERROR=1`` is set.
"""

from __future__ import annotations

from typing import Any, Iterable


class UserError(Exception):
    """A mistake the user can fix; its message is the whole story, so no traceback is shown."""


class ConfigValueError(UserError, ValueError):
    """A config key holds a value outside what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class RunInterrupted(KeyboardInterrupt):
    """Raised from the run's SIGTERM/SIGINT handler so that Lightning shuts down as for Ctrl-C."""


class RunKilled(SystemExit):
    """The run was stopped by a signal and marked KILLED; exits with 128 + the signal number."""

    def __init__(self, code: int, run_id: str, signal_name: str) -> None:
        super().__init__(code)
        self.run_id, self.signal_name = run_id, signal_name

    def __reduce__(self) -> tuple:  # a job in a launcher's worker process sends it back pickled
        return type(self), (self.code, self.run_id, self.signal_name)


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigValueError(key, value, "expected one of " + ", ".join(repr(c) for c in choices))


def check_range(key: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True, high_inclusive: bool = True, integer: bool = False) -> None:
    """Raise a :class:`ConfigValueError` unless ``low <=/< value <=/< high``."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigValueError(key, value, "expected an integer")
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        left = "" if low is None else f"{'≥' if low_inclusive else '>'} {low}"
        right = "" if high is None else f"{'≤' if high_inclusive else '<'} {high}"
        kind = "an integer" if integer else "a number"
        raise ConfigValueError(key, value, f"expected {kind} {' and '.join(p for p in (left, right) if p)}")


def required(key: str) -> str:
    """How a missing required value is said, wherever it is found."""
    return f"{key} is required and has no value: add {key}=VALUE" + (
        " (the CSV file to read)" if key == "datamodule.path" else "")


def one_line(exc: BaseException) -> str:
    """Reduce an exception from Hydra/OmegaConf/our code to the one line a user needs."""
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    # Hydra wraps the real cause (an OmegaConf error, or ours) in composition errors: find the root.
    chain, seen = [], set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        chain.append(node)
        node = node.__cause__ or node.__context__
    for err in chain:
        if isinstance(err, UserError):
            return str(err)
    for err in chain:
        if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
            msg = (getattr(err, "msg", None) or str(err)).splitlines()[0]
            key, obj = err.full_key, getattr(err, "object_type_str", None)
            if isinstance(err, ConfigKeyError) or "not in" in msg:
                allowed = _allowed_keys(getattr(err, "object_type", None))
                hint = f" (allowed keys: {allowed})" if allowed else ""
                return f"{key}: unknown config key{hint}"
            if type(err).__name__ == "MissingMandatoryValue":
                return required(key)
            if isinstance(err, ValidationError):
                value = getattr(err, "value", None)
                if msg.startswith("Invalid value") and "expected one of [" in msg:  # an enum's choices
                    choices = msg.split("expected one of [", 1)[1].rstrip("]").split(", ")
                    return f"{key}={value!r} is not allowed: expected one of " + ", ".join(map(repr, choices))
                return f"{key}={value!r} is not allowed: {msg}" if value is not None else f"{key}: {msg}"
            return f"{key}: {msg}" + (f" (in {obj})" if obj and obj != "None" else "")
    first = chain[0]
    text = str(first).strip().splitlines()
    parse = next((e for e in chain if type(e).__name__ == "OverrideParseException"), None)
    override = getattr(parse, "override", None)
    if isinstance(override, str) and not (text and text[0].startswith("Error parsing override")):
        return _override_error(override, str(parse).strip().splitlines() or [""])
    # Hydra's own messages (missing config group option, bad override syntax) are already readable:
    # keep their first line and the list of options when Hydra gives one.
    if text and "Available options" in str(first):
        start = next(i for i, t in enumerate(text) if "Available options" in t) + 1
        options = []
        for t in text[start:]:
            if not t.strip() or "search path" in t:
                break
            options.append(t.strip())
        line = f"{text[0]} Available options: {', '.join(options)}"
        if "'hydra/sweeper/optuna'" in text[0]:  # labbook's own plugin, unseen by Hydra's scan (hydra#3252)
            line += (" (labbook's Optuna sweeper is installed but Hydra's plugin scan cannot list an editable "
                     "install's hydra_plugins: set up the checkout with python3 dev.py setup)")
        return line
    if text and text[0].startswith("Error parsing override") and len(text) > 1 and "hydra.cc" not in text[1]:
        # Hydra's reason is on the second line ("empty choice is not legal"); the third is a link.
        reason = text[1].split(": ", 1)[-1]
        if "missing EQUAL" in text[1]:
            hint = "not KEY=VALUE; a value with spaces needs quotes: key='two words'"
        elif text[1].startswith("ValueError while evaluating"):
            hint = "sweep syntax: choice(a,b), range(a,b[,step]), interval(a,b), tag(log, interval(a,b))"
        else:
            hint = "a value with spaces or special characters needs quotes: key='a value'"
        return f"{text[0]}: {reason} ({hint})"
    if text and text[0].startswith("Could not override '") and "No match in the defaults list" in text[0]:
        group = text[0].split("'")[1]  # a group nothing composes yet (a project's own): Hydra wants it added
        added = next((t.split(" use ", 1)[1].strip() for t in text[1:] if " use +" in t), f"+{group}=OPTION")
        return (f"{added[1:]}: the group {group} is not in the defaults list (conf/train.yaml's or a preset's): "
                f"add it with {added}")
    if text and text[0].startswith("Ambiguous value for argument"):  # Hydra's advice follows on 3 lines
        return (f"{text[0]}: add -m to sweep over the values, or write key=[a,b] for a list, "
                "key='a,b' for one string")
    return text[0] if text else type(first).__name__


_LEXER = "LexerNoViableAltException: "


def _override_error(override: str, text: list[str]) -> str:
    """Hydra's lexer and parser errors, which name neither the override (the parser's) nor what to do (both):
    the override, the character Hydra's caret points at and its position (the lexer's), and the quoting that
    reads the value as one string, ready to paste."""
    head = f"Error parsing override {override!r}"
    key, eq, value = override.partition("=")
    if text[0].startswith(_LEXER) and len(text) > 1 and "^" in text[1]:
        at = text[1].index("^") - len(_LEXER)  # the caret line lines up under the override after the prefix
        if 0 <= at < len(override):
            where = f"character {override[at]!r} at position {at + 1}"
            if not eq or at < len(key):
                return f"{head}: {where} is not allowed in a key (KEY=VALUE, a key such as logger.run_name)"
            return f"{head}: {where} is not allowed in an unquoted value ({_quote_hint(key, value)})"
    reason = "a character Hydra cannot read" if text[0].startswith(_LEXER) else text[0]
    return f"{head}: {reason} ({_quote_hint(key, value) if eq else 'expected KEY=VALUE'})"


def _quote_hint(key: str, value: str) -> str:
    """Hydra's quotes inside the shell's, for this value when it has no quote or backslash of its own."""
    if any(c in value for c in "'\"\\"):
        return "a value with spaces or special characters needs quotes, inside the shell's: 'key=\"a value\"'"
    return f"a value with spaces or special characters needs quotes, inside the shell's: '{key}=\"{value.strip()}\"'"


def _allowed_keys(object_type: Any) -> str:
    import dataclasses

    if object_type is not None and dataclasses.is_dataclass(object_type):
        return ", ".join(f.name for f in dataclasses.fields(object_type) if not f.name.startswith("_"))
    return ""
