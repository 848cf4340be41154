"""``labbook completion bash|zsh``: the shell script that makes ``labbook <TAB>`` complete.

``eval "$(labbook completion bash)"`` (in ``~/.bashrc``) or ``eval "$(labbook completion zsh)"`` (in
``~/.zshrc``, after ``compinit``) registers a completion function for the command ``labbook``. On each
<TAB> the function runs ``labbook completion query SHELL``, which prints the candidates, one a line:

* the subcommands (``labbook tr`` -> ``train``), and each subcommand's flags and their choices, read from
  the subcommand's own argument parser (``parser()`` in its module);
* for ``labbook train``, Hydra overrides (:mod:`labbook.cli.train_completion`) and Hydra's flags.

Hydra's own ``-sc install=bash`` completes the command as one Hydra app, so ``labbook train mod<TAB>`` never
reaches it (the first word is a subcommand); ``labbook train -sc install=SHELL`` prints this script instead.

How the shells hand over the line: bash through ``COMP_LINE``/``COMP_POINT`` (its ``COMP_WORDS`` are split
at ``=`` and ``:``, ``COMP_WORDBREAKS``), and the candidates go back cut to the part of the word bash
replaces (``model=g`` -> ``gmm``); zsh as arguments, the words before the cursor's and the cursor's own
prefix, and the candidates go back whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shlex
import sys
from typing import Sequence

SHELLS = ("bash", "zsh")
BASH_WORDBREAKS = " \t\n\"'><=;|&(:"  # bash's default COMP_WORDBREAKS

BASH_SCRIPT = r"""# labbook's tab completion for bash: eval "$(labbook completion bash)"
_labbook() {
    local IFS=$'\n' cmd=${COMP_WORDS[0]}
    [[ $cmd == "~/"* ]] && cmd=$HOME/${cmd:2}
    command -v -- "$cmd" >/dev/null 2>&1 || cmd=labbook
    COMPREPLY=($(COMP_LINE=$COMP_LINE COMP_POINT=$COMP_POINT COMP_WORDBREAKS=$COMP_WORDBREAKS \
                 "$cmd" completion query bash 2>/dev/null))
    # A word that goes on (a group's "=", a key's "." or "=", a folder's "/") takes no space after it.
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=./] ]]; then
        compopt -o nospace
    fi
}
complete -o default -F _labbook labbook
"""

ZSH_SCRIPT = r"""# labbook's tab completion for zsh: eval "$(labbook completion zsh)" (after compinit)
_labbook() {
    local cmd=${(Q)words[1]} c
    local -a found goes_on ends
    [[ $cmd == "~/"* ]] && cmd=$HOME/${cmd#\~/}
    (( $+commands[$cmd] )) || [[ -x $cmd ]] || cmd=labbook
    found=("${(@f)$("$cmd" completion query zsh -- "${(@)words[2,CURRENT-1]}" "$PREFIX" 2>/dev/null)}")
    for c in "${found[@]}"; do
        [[ -z $c ]] && continue
        # A word that goes on (a group's "=", a key's "." or "=", a folder's "/") takes no space after it.
        if [[ $c == *[=./] ]]; then goes_on+=("$c"); else ends+=("$c"); fi
    done
    (( ${#goes_on} )) && compadd -S '' -- "${goes_on[@]}"
    (( ${#ends} )) && compadd -- "${ends[@]}"
    (( ${#goes_on} + ${#ends} )) || _files
}
(( $+functions[compdef] )) || { autoload -Uz compinit && compinit; }
compdef _labbook labbook
"""

SCRIPTS = {"bash": BASH_SCRIPT, "zsh": ZSH_SCRIPT}

USAGE = """\
usage: labbook completion bash|zsh      print the script that makes labbook's arguments complete on <TAB>
  bash: eval "$(labbook completion bash)"   (add the line to ~/.bashrc)
  zsh:  eval "$(labbook completion zsh)"    (add the line to ~/.zshrc, after compinit)
"""


def main(args: Sequence[str]) -> int:
    args = list(args)
    if args[:1] == ["query"] and len(args) >= 2 and args[1] in SHELLS:  # what the scripts run on <TAB>
        return query(args[1], args[2:])
    if len(args) == 1 and args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if len(args) != 1 or args[0] not in SHELLS:
        print(f"labbook: error: labbook completion takes one shell, bash or zsh{'' if not args else f' (not {shlex.join(args)!r})'}\n"
              f"{USAGE}", file=sys.stderr, end="")
        return 2
    print(SCRIPTS[args[0]], end="")
    return 0


def query(shell: str, args: Sequence[str]) -> int:
    """Print the candidates for the word at the cursor, one a line, as the shell's script reads them."""
    if shell == "bash":
        line = os.environ.get("COMP_LINE", "")
        point = int(os.environ.get("COMP_POINT") or len(line))
        words, current = split_line(line[:point])
        found = candidates(words[1:], current)
        cut = bash_cut(current, os.environ.get("COMP_WORDBREAKS") or BASH_WORDBREAKS)
        found = [c[cut:] for c in found]
    else:  # zsh: -- WORDS... PREFIX, the command's own name left out
        rest = list(args[1:] if args[:1] == ["--"] else args)
        words, current = rest[:-1], rest[-1] if rest else ""
        found = candidates(words, current)
    sys.stdout.write("".join(f"{c}\n" for c in found))
    return 0


def split_line(line: str) -> tuple[list[str], str]:
    """``labbook train model=g`` -> (``["labbook", "train"]``, ``"model=g"``): the words before the cursor's,
    and the cursor's own (empty after a space). An unclosed quote is closed as the shell would ask for."""
    for closing in ("", '"', "'"):
        try:
            words = shlex.split(line + closing)
        except ValueError:
            continue
        if not closing and (not line or line[-1].isspace()) and not line.endswith("\\ "):
            return words, ""
        return words[:-1], words[-1] if words else ""
    return line.split(), ""


def bash_cut(word: str, wordbreaks: str) -> int:
    """How much of ``word`` bash does not replace: up to its last word-break character (``model=g``: 6)."""
    return max((word.rfind(c) for c in set(wordbreaks)), default=-1) + 1


def candidates(words: Sequence[str], current: str) -> list[str]:
    """Completions of ``current`` after ``labbook WORDS...``."""
    from labbook.cli.table import COMMANDS

    if not words:
        if current.startswith("-"):
            return [f for f in ("--help", "--version") if f.startswith(current)]
        return sorted(c for c in COMMANDS if c.startswith(current))
    command, rest = words[0], list(words[1:])
    if command == "completion":
        return [s for s in SHELLS if s.startswith(current)] if not rest else []
    if command == "train" and not current.startswith("-") and not (rest and rest[-1].startswith("-")):
        from labbook.cli.train_completion import override_candidates

        # An override for sure (no flag before it): Hydra's flags are read only if keys must be matched.
        return override_candidates(current, lambda: overrides_typed(command_options("train") or [], rest))
    options = command_options(command)
    if options is None:
        return []
    found, positional = flag_candidates(options, rest, current)
    if positional and command == "train":
        from labbook.cli.train_completion import override_candidates

        return override_candidates(current, lambda: overrides_typed(options, rest))
    return found


@dataclasses.dataclass(frozen=True)
class Option:
    names: tuple[str, ...]
    takes_value: bool
    choices: tuple[str, ...] = ()


def command_options(command: str) -> list[Option] | None:
    """The flags of ``labbook COMMAND``, from the parser it parses its arguments with."""
    if command == "train":  # Hydra's flags, parsed by Hydra
        from hydra._internal.utils import get_args_parser

        return from_parser(get_args_parser())
    if command == "predict":  # parsed by hand: an input may start with "-"
        from labbook.cli.predict import FLAGS, URI_FLAG

        return [Option((flag,), flag == URI_FLAG) for flag in FLAGS]
    from labbook.cli.table import COMMANDS

    if command not in COMMANDS:
        return None
    module = importlib.import_module(COMMANDS[command])
    return from_parser(module.parser()) if hasattr(module, "parser") else None


def from_parser(parser: argparse.ArgumentParser) -> list[Option]:
    # argparse lists its arguments only in _actions (Hydra's own --hydra-help reads them there too).
    return [Option(tuple(action.option_strings), action.nargs != 0, tuple(str(c) for c in action.choices or ()))
            for action in parser._actions if action.option_strings]


def flag_candidates(options: Sequence[Option], before: Sequence[str], current: str) -> tuple[list[str], bool]:
    """(completions of ``current`` as a flag or a flag's value, whether it is a positional argument instead)."""
    by_name = {name: option for option in options for name in option.names}
    if current.startswith("-"):
        name, eq, value = current.partition("=")
        if eq:
            option = by_name.get(name)
            return ([f"{name}={c}" for c in option.choices if c.startswith(value)] if option else []), False
        return sorted(n for n in by_name if n.startswith(current)), False
    previous = by_name.get(before[-1]) if before else None
    if previous is not None and previous.takes_value:
        return [c for c in previous.choices if c.startswith(current)], False
    return [], True


def overrides_typed(options: Sequence[Option], words: Sequence[str]) -> list[str]:
    """The positional words among ``words`` (for ``train``: the overrides), flags and their values left out."""
    by_name = {name: option for option in options for name in option.names}
    typed, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-"):
            option = by_name.get(word)
            skip = option is not None and option.takes_value and "=" not in word
        else:
            typed.append(word)
    return typed
