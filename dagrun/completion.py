"""Shell completion scripts (``dagrun completion bash|zsh|fish``), made from the CLI's parser.

Commands and options come from the argparse parser itself, so the scripts
never fall behind the CLI; task and matrix group names come, at completion
time, from ``dagrun list --names`` (run with the ``-C``/``-f`` already typed).

    bash:  eval "$(dagrun completion bash)"   (in ~/.bashrc)
    zsh:   dagrun completion zsh > "${fpath[1]}/_dagrun"
    fish:  dagrun completion fish > ~/.config/fish/completions/dagrun.fish
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

SHELLS = ("bash", "zsh", "fish")
TAKES_TASKS = ("build", "watch", "graph", "clean", "show", "tree", "tail", "cancel")


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    takes_value: bool
    choices: tuple[str, ...]
    help: str
    metavar: str = ""  # FILE / DIR complete as paths; N, MS as nothing


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]


def _options(p: argparse.ArgumentParser) -> tuple[Option, ...]:
    out = []
    for a in p._actions:
        if not a.option_strings or a.help == argparse.SUPPRESS:
            continue
        choices = tuple(str(c) for c in a.choices) if a.choices else ()
        metavar = a.metavar if isinstance(a.metavar, str) else ""
        out.append(Option(tuple(a.option_strings), a.nargs != 0, choices, a.help or "", metavar))
    return tuple(out)


def describe(parser: argparse.ArgumentParser) -> tuple[tuple[Option, ...], tuple[Command, ...]]:
    """The global options and each command with its options (all it accepts)."""
    commands = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in a._choices_actions}
            for name, sub in a.choices.items():
                commands.append(Command(name, helps.get(name, ""), _options(sub)))
    return _options(parser), tuple(commands)


def _own(opts: tuple[Option, ...], command: Command) -> Command:
    """``command`` without the global options it shares (so no option is offered twice)."""
    shared = {f for o in opts for f in o.flags}
    own = tuple(o for o in command.options if not shared & set(o.flags))
    return Command(command.name, command.help, own)


def _all(opts: tuple[Option, ...], commands: tuple[Command, ...]) -> list[Option]:
    return list(opts) + [o for c in commands for o in c.options]


def _valued(opts: tuple[Option, ...], commands: tuple[Command, ...], paths: bool) -> list[str]:
    """Options that take a value: a path (``paths``; FILE) or anything else (N, MS, choices)."""
    found: set[str] = set()
    for o in _all(opts, commands):
        if o.takes_value and "-C" not in o.flags and (o.metavar == "FILE") == paths:
            found.update(o.flags)
    return sorted(found)


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    opts, commands = describe(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](opts, commands)


def _words(opts: tuple[Option, ...]) -> str:
    return " ".join(f for o in opts for f in o.flags)


_BASH = r"""# dagrun completion for bash: eval "$(dagrun completion bash)"
_dagrun_names() {
    local args=() i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -C|-f) args+=("${COMP_WORDS[i]}" "${COMP_WORDS[i+1]}") ;;
        esac
    done
    dagrun "${args[@]}" list --names 2>/dev/null
}
_dagrun_tasks() {  # names matching the word as typed: bash splits cc[c=src/m at = (and :)
    local full="$cur" line="${COMP_LINE:0:COMP_POINT}" i
    [[ -n "$COMP_LINE" ]] && full="${line##*[[:space:]]}"
    local IFS=$'\n'
    COMPREPLY=($(compgen -W "$(_dagrun_names)" -- "$full"))
    local head="${full%"$cur"}"  # what bash keeps before the word it replaces
    if [[ -n "$head" ]]; then
        for i in "${!COMPREPLY[@]}"; do COMPREPLY[i]="${COMPREPLY[i]#"$head"}"; done
    fi
}
_dagrun() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" i
    case "$prev" in
        -C) COMPREPLY=($(compgen -d -- "$cur")); return ;;
@@CHOICES@@
        @@PATHS@@) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        @@VALUES@@) return ;;
    esac
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -C|@@PATHS@@|@@VALUES@@) ((i++)) ;;
            -*) ;;
            *) cmd="${COMP_WORDS[i]}"; break ;;
        esac
    done
    local opts="@@GLOBAL@@"
    case "$cmd" in
@@CMDOPTS@@
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ -z "$cmd" ]]; then  # a command, or a target (without a command, dagrun builds)
        local IFS=$'\n'
        COMPREPLY=($(compgen -W "$(printf '%s\n' @@COMMANDS@@; _dagrun_names)" -- "$cur"))
    elif [[ "$cmd" == completion ]]; then
        COMPREPLY=($(compgen -W "bash zsh fish" -- "$cur"))
    elif [[ " @@TASKS@@ " == *" $cmd "* || " @@COMMANDS@@ " != *" $cmd "* ]]; then
        _dagrun_tasks
    fi
}
complete -F _dagrun dagrun
"""


def _choice_cases(opts: tuple[Option, ...], commands: tuple[Command, ...], fmt: str) -> str:
    seen: dict[str, tuple[str, ...]] = {}
    for o in _all(opts, commands):
        if o.choices:
            for f in o.flags:
                seen[f] = o.choices
    return "\n".join(fmt.format(flag=f, words=" ".join(ch)) for f, ch in sorted(seen.items()))


def _fill(template: str, opts: tuple[Option, ...], commands: tuple[Command, ...]) -> str:
    paths = "|".join(_valued(opts, commands, paths=True))
    values = "|".join(_valued(opts, commands, paths=False))
    return template.replace("@@PATHS@@", paths).replace("@@VALUES@@", values)


def _any(build: Command) -> Command:
    """The ``case`` branch of a word that is no command: an implicit build, with its options."""
    return Command("?*", build.help, build.options)


def _bash(opts: tuple[Option, ...], commands: tuple[Command, ...]) -> str:
    choices = _choice_cases(
        opts, commands, '        {flag}) COMPREPLY=($(compgen -W "{words}" -- "$cur")); return ;;'
    )
    build = next(c for c in commands if c.name == "build")
    cmdopts = "\n".join(
        f'        {c.name}) opts="$opts {_words(_own(opts, c).options)}" ;;'
        for c in (*commands, _any(build))
    )
    return (
        _fill(_BASH, opts, commands)
        .replace("@@CHOICES@@", choices)
        .replace("@@GLOBAL@@", _words(opts))
        .replace("@@CMDOPTS@@", cmdopts)
        .replace("@@COMMANDS@@", " ".join(c.name for c in commands))
        .replace("@@TASKS@@", " ".join(TAKES_TASKS))
    )


_ZSH = r"""#compdef dagrun
# dagrun completion for zsh: dagrun completion zsh > "${fpath[1]}/_dagrun"
_dagrun() {
    local cmd="" i
    local -a args opts
    case ${words[CURRENT-1]} in
        -C) _files -/; return ;;
@@CHOICES@@
        @@PATHS@@) _files; return ;;
        @@VALUES@@) return ;;
    esac
    for ((i = 2; i < CURRENT; i++)); do
        case ${words[i]} in
            -C|-f) args+=(${words[i]} ${words[i+1]}); ((i++)) ;;
            @@PATHS@@|@@VALUES@@) ((i++)) ;;
            -*) ;;
            *) cmd=${words[i]}; break ;;
        esac
    done
    opts=(@@GLOBAL@@)
    case $cmd in
@@CMDOPTS@@
    esac
    if [[ $PREFIX == -* ]]; then
        compadd -- $opts
    elif [[ -z $cmd ]]; then  # a command, or a target (without a command, dagrun builds)
        compadd -- @@COMMANDS@@ ${(f)"$(dagrun $args list --names 2>/dev/null)"}
    elif [[ $cmd == completion ]]; then
        compadd -- bash zsh fish
    elif (( ${${(s: :):-@@TASKS@@}[(Ie)$cmd]} || ! ${${(s: :):-@@COMMANDS@@}[(Ie)$cmd]} )); then
        compadd -- ${(f)"$(dagrun $args list --names 2>/dev/null)"}
    fi
}
compdef _dagrun dagrun
"""


def _zsh(opts: tuple[Option, ...], commands: tuple[Command, ...]) -> str:
    choices = _choice_cases(opts, commands, "        {flag}) compadd -- {words}; return ;;")
    build = next(c for c in commands if c.name == "build")
    cmdopts = "\n".join(
        f"        {c.name}) opts+=({_words(_own(opts, c).options)}) ;;"
        for c in (*commands, _any(build))
    )
    return (
        _fill(_ZSH, opts, commands)
        .replace("@@CHOICES@@", choices)
        .replace("@@GLOBAL@@", _words(opts))
        .replace("@@CMDOPTS@@", cmdopts)
        .replace("@@COMMANDS@@", " ".join(c.name for c in commands))
        .replace("@@TASKS@@", " ".join(TAKES_TASKS))
    )


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_option(o: Option, condition: str | None) -> str:
    parts = ["complete -c dagrun"]
    if condition:
        parts.append(f"-n {_fish_quote(condition)}")
    for f in o.flags:
        parts.append(f"-l {f[2:]}" if f.startswith("--") else f"-s {f[1:]}")
    if o.takes_value:
        parts.append("-r")
        if o.choices:
            parts.append(f"-f -a {_fish_quote(' '.join(o.choices))}")
        elif "-C" in o.flags:
            parts.append("-f -a '(__fish_complete_directories)'")
        else:
            parts.append("-F")
    if o.help:
        parts.append(f"-d {_fish_quote(o.help)}")
    return " ".join(parts)


def _fish(opts: tuple[Option, ...], commands: tuple[Command, ...]) -> str:
    names = " ".join(c.name for c in commands)
    seen_any = f"__fish_seen_subcommand_from {names}"
    lines = [
        "# dagrun completion for fish: dagrun completion fish > "
        "~/.config/fish/completions/dagrun.fish",
        "complete -c dagrun -f",
    ]
    lines += [_fish_option(o, None) for o in opts]
    for c in commands:
        lines.append(
            f"complete -c dagrun -n {_fish_quote('not ' + seen_any)} "
            f"-a {c.name} -d {_fish_quote(c.help)}"
        )
        seen = f"__fish_seen_subcommand_from {c.name}"
        lines += [_fish_option(o, seen) for o in _own(opts, c).options]
    tasks = f"__fish_seen_subcommand_from {' '.join(TAKES_TASKS)}; or not {seen_any}"
    lines.append(
        f"complete -c dagrun -n {_fish_quote(tasks)} -a '(dagrun list --names 2>/dev/null)'"
    )
    lines.append(
        "complete -c dagrun -n '__fish_seen_subcommand_from completion' -a 'bash zsh fish'"
    )
    return "\n".join(lines) + "\n"
