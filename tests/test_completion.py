"""Tab completion as the shells run it: the script ``labbook completion bash|zsh`` prints is loaded into a real
bash or zsh, and the function it registered is called as the shell calls it on <TAB> (bash: ``COMP_WORDS``,
``COMP_CWORD``, ``COMP_LINE``, ``COMP_POINT``, then ``COMPREPLY``; zsh: ``words``, ``CURRENT``, ``PREFIX``,
then what reaches ``compadd``). The last tests press <TAB> in an interactive shell on a terminal and read
the line it completed."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import LABBOOK, labbook

# The candidates, exact. bash gets them cut to the part of the word it replaces (after "=" and ":", which
# split its words), zsh whole; both: no space after a word that goes on ("=", ".", "/").
# The LSTM's keys are its constructor's arguments (a nested one, the optimizer, goes on with ".").
LSTM_KEYS = ["model._target_=", "model.dropout=", "model.hidden_size=", "model.horizon=", "model.n_features=",
             "model.num_layers=", "model.optimizer.", "model.target_mean=", "model.target_std=", "model.window="]
CASES = [
    ("labbook ", ["compare", "completion", "diff", "new", "predict", "reap", "register", "serve", "server", "train", "ui"]),
    ("labbook tr", ["train"]),
    ("labbook -", ["--help", "--version"]),
    ("labbook completion ", ["bash", "zsh"]),
    ("labbook train mod", ["model.", "model="]),
    ("labbook train model=g", ["model=gmm"]),
    ("labbook train model=", ["model=gmm", "model=lstm", "model=polynomial", "model=seq2seq", "model=transformer"]),
    ("labbook train experiment=gmm_", ["experiment=gmm_blobs", "experiment=gmm_iris"]),
    ("labbook train hydra/launcher=", ["hydra/launcher=basic", "hydra/launcher=joblib", "hydra/launcher=slurm",
                                      "hydra/launcher=submitit_local", "hydra/launcher=submitit_slurm"]),
    ("labbook train model.n_comp", ["model.n_components="]),
    ("labbook train model.cov", ["model.covariance_type="]),
    # the config composed with the overrides before the word: the LSTM's keys after model=lstm
    ("labbook train model=lstm model.", LSTM_KEYS),
    ("labbook train -m model=lstm model.hid", ["model.hidden_size="]),
    ("labbook train model=lstm model.optimizer.", ["model.optimizer._partial_=", "model.optimizer._target_=",
                                                   "model.optimizer.lr="]),
    ("labbook train experiment=lstm_sunspots trainer.max_epochs=", ["trainer.max_epochs=60"]),  # the current value
    ("labbook train --cfg ", ["job", "hydra", "all"]),
    ("labbook train --c", ["--cfg", "--config-dir", "--config-name", "--config-path"]),
    ("labbook compare --format=", ["--format=table", "--format=csv", "--format=json"]),
    ("labbook compare --agg=", ["--agg=last", "--agg=best", "--agg=min", "--agg=max"]),
    ("labbook ui --", ["--help", "--host", "--port", "--tracking-uri"]),
    ("labbook reap --st", ["--stale-after"]),
    ("labbook predict --", ["--help", "--tracking-uri"]),
    ("labbook server --p", ["--pg-port", "--port"]),
    ("labbook register --a", ["--alias"]),
    ("labbook serve --po", ["--port"]),
]
# Nothing to offer: the shell's own file-name completion takes over (-o default in bash, _files in zsh).
NOTHING = ["labbook train datamodule.path=da", "labbook train model.nosuch", "labbook diff "]


def shell_env() -> dict[str, str]:
    """``labbook`` on PATH is this checkout's, as for a user who activated its environment."""
    return {**os.environ, "PATH": f"{Path(LABBOOK).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONWARNINGS": "ignore"}


def zsh() -> str:
    found = shutil.which("zsh")
    if not found:
        pytest.fail("zsh is not installed: apt-get install zsh (.ci/run does it)")
    return found


def bash_words(line: str) -> list[str]:
    """``COMP_WORDS`` as bash splits a line: at blanks, and with each run of word-break characters that are not
    blanks or quotes (``=``, ``:``...) a word of its own; a trailing blank starts an empty word."""
    words = re.findall(r"[^\s=:;|&()<>]+|[=:;|&()<>]+", line)
    return words + [""] if not line or line[-1].isspace() else words


def bash_complete(line: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[list[str], bool]:
    """(``COMPREPLY``, whether the function asked for no space after the word), from the function that
    ``complete -p labbook`` names, called with the variables bash sets; ``env``: the shell's (default: this
    checkout's ``labbook`` first on PATH)."""
    words = bash_words(line)
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    script = f"""
eval "$(labbook completion bash)"
function=$(complete -p labbook | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p')
compopt() {{ echo "compopt $1 $2" >&2; }}   # outside a real <TAB> bash has no completion to set options on
COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMP_LINE={_sq(line)}; COMP_POINT={len(line)}
"$function" labbook "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env or shell_env(), cwd=cwd,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.split("\n") if w], "compopt -o nospace" in out.stderr


def zsh_complete(line: str) -> list[tuple[str, str]]:
    """[(candidate, the suffix zsh would add)], from the function ``compdef`` registered for ``labbook``
    (``$_comps[labbook]``), called with ``words``/``CURRENT``/``PREFIX`` set as zsh sets them and
    ``compadd`` recording what it is given."""
    words = line.split() + ([""] if line.endswith(" ") else [])
    script = f"""
autoload -Uz compinit && compinit -u -D
eval "$(labbook completion zsh)"
compadd() {{
    local suffix=" "
    [[ $1 == -S ]] && {{ suffix=$2; shift 2 }}
    [[ $1 == -- ]] && shift
    local c; for c in "$@"; do print -r -- "$c	$suffix"; done
}}
_files() {{ print -r -- "(files)	" }}
words=({" ".join(_sq(w) for w in words)}); CURRENT={len(words)}; PREFIX={_sq(words[-1])}
$_comps[labbook]
"""
    out = subprocess.run([zsh(), "-f", "-c", script], capture_output=True, text=True, env=shell_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return [tuple(row.split("\t", 1)) for row in out.stdout.split("\n") if row]  # type: ignore[misc]


def _sq(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def bash_cut(candidate: str, line: str) -> str:
    """What bash's COMPREPLY holds for ``candidate``: the part after the current word's last "=" or ":"."""
    word = line.split(" ")[-1]
    return candidate[max(word.rfind("="), word.rfind(":")) + 1:]


@pytest.mark.parametrize("line,expected", CASES, ids=[c[0] for c in CASES])
def test_bash_completes(line: str, expected: list[str]) -> None:
    reply, nospace = bash_complete(line)
    assert reply == [bash_cut(c, line) for c in expected]
    assert nospace == (len(expected) == 1 and expected[0][-1] in "=./")


@pytest.mark.parametrize("line,expected", CASES, ids=[c[0] for c in CASES])
def test_zsh_completes(line: str, expected: list[str]) -> None:
    offered = zsh_complete(line)
    assert sorted(c for c, _ in offered) == sorted(expected)
    for candidate, suffix in offered:
        assert suffix == ("" if candidate[-1] in "=./" else " "), (candidate, suffix)


@pytest.mark.parametrize("line", NOTHING)
def test_nothing_to_offer_falls_back_to_file_names(line: str) -> None:
    assert bash_complete(line) == ([], False)
    assert zsh_complete(line) == [("(files)", "")]


def test_bash_registration_keeps_file_names_as_the_fallback() -> None:
    out = subprocess.run(["bash", "-c", 'eval "$(labbook completion bash)"; complete -p labbook'], capture_output=True,
                         text=True, env=shell_env(), timeout=60)
    assert out.stdout.strip() == "complete -o default -F _labbook labbook"


def test_train_sc_install_prints_labbooks_script(tmp_path: Path) -> None:
    """Hydra's ``-sc install=bash`` would complete ``labbook`` as one Hydra app; it prints labbook's script."""
    for shell in ("bash", "zsh"):
        assert labbook("train", "-sc", f"install={shell}", cwd=tmp_path).stdout == labbook("completion", shell, cwd=tmp_path).stdout
    out = labbook("train", "-sc", "query=bash", cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and 'eval "$(labbook completion bash)"' in out.stderr


def test_completion_needs_a_shell(tmp_path: Path) -> None:
    out = labbook("completion", "fish", cwd=tmp_path)
    assert out.returncode == 2 and "labbook completion takes one shell, bash or zsh (not 'fish')" in out.stderr


# Pressing <TAB> for real: an interactive shell on a terminal, a key (Ctrl-T) bound to write its line buffer.
def typed_with_tab(shell: str, line: str, tmp_path: Path) -> str:
    buffer = tmp_path / "buffer.txt"
    if shell == "bash":
        argv = ["bash", "--norc", "--noprofile", "-i"]
        setup = f'eval "$(labbook completion bash)"; bind -x \'"\\C-t": printf "%s" "$READLINE_LINE" > {buffer}\'\n'
    else:
        argv = [zsh(), "-f", "-i"]
        setup = (f'autoload -Uz compinit; compinit -u -D; eval "$(labbook completion zsh)"; '
                 f'show() {{ print -rn -- "$BUFFER" > {buffer} }}; zle -N show; bindkey "^T" show\n')
    env = {**shell_env(), "HOME": str(tmp_path), "TERM": "dumb"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the shell
        os.chdir(tmp_path)
        os.execvpe(argv[0], argv, env)
    try:
        def drain(seconds: float) -> None:
            end = time.time() + seconds
            while time.time() < end:
                if select.select([fd], [], [], 0.05)[0]:
                    try:
                        os.read(fd, 65536)
                    except OSError:
                        return

        drain(0.5)
        os.write(fd, setup.encode())
        drain(2.0)
        os.write(fd, line.encode() + b"\t")
        drain(0.5)  # keys typed while the completion runs wait their turn: Ctrl-T reads the completed line
        os.write(fd, b"\x14")  # Ctrl-T
        deadline = time.time() + 30
        while not buffer.exists() and time.time() < deadline:
            drain(0.1)
        return buffer.read_text() if buffer.exists() else "(no buffer written)"
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_tab_in_an_interactive_shell(shell: str, tmp_path: Path) -> None:
    assert typed_with_tab(shell, "labbook tr", tmp_path) == "labbook train "
    (tmp_path / "buffer.txt").unlink()
    assert typed_with_tab(shell, "labbook train model=lstm model.hid", tmp_path) == "labbook train model=lstm model.hidden_size="
