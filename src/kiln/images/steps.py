"""Dockerfile instructions, parsed into steps the builder executes.

`RUN` and `COPY` change the filesystem; `WORKDIR` creates its directory; the rest (`ENV`, `CMD`,
`ENTRYPOINT`, `SHELL`, `USER`, `ARG`, `LABEL`, `EXPOSE`, …) only change the image's config.
Anything else is refused with a message naming the instruction, never silently ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from kiln.errors import ImageBuildError

CONFIG_ONLY = {"ENV", "CMD", "ENTRYPOINT", "SHELL", "USER", "ARG", "LABEL", "EXPOSE", "VOLUME", "STOPSIGNAL"}
FILESYSTEM = {"RUN", "COPY", "ADD", "WORKDIR"}
UNSUPPORTED = {"ONBUILD": "ONBUILD triggers", "HEALTHCHECK": "container health checks", "MAINTAINER": None}


@dataclass(frozen=True)
class Step:
    """One instruction: its keyword and the rest of the line, exactly as written."""

    instruction: str
    argument: str

    @property
    def text(self) -> str:
        return f"{self.instruction} {self.argument}"


@dataclass
class ImageConfig:
    """What an image records besides files, as in an OCI image config."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    cmd: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    shell: list[str] = field(default_factory=lambda: ["/bin/sh", "-c"])
    user: str = ""
    python_version_info: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "env": self.env,
            "workdir": self.workdir,
            "cmd": self.cmd,
            "entrypoint": self.entrypoint,
            "shell": self.shell,
            "user": self.user,
            "python_version_info": self.python_version_info,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ImageConfig:
        config = cls()
        for key, value in data.items():
            if hasattr(config, key):
                setattr(config, key, value)
        return config

    def copy(self) -> ImageConfig:
        return ImageConfig.from_json(json.loads(json.dumps(self.to_json())))


def parse_dockerfile(lines: list[str]) -> list[Step]:
    """Parse Dockerfile lines (continuations, comments and blank lines allowed) into steps."""
    steps: list[Step] = []
    pending = ""
    for raw in lines:
        line = raw.rstrip("\n")
        # Comment and blank lines are dropped before continuations are joined, as Docker does.
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        steps.append(_parse_line(line.strip()))
    if pending.strip():
        steps.append(_parse_line(pending.strip()))
    return steps


def _parse_line(line: str) -> Step:
    keyword, _, argument = line.replace("\t", " ", 1).partition(" ")
    instruction = keyword.upper()
    argument = argument.strip()
    if instruction == "FROM":
        return Step("FROM", argument)
    if instruction in UNSUPPORTED:
        raise ImageBuildError(
            f"Dockerfile instruction {instruction} is not supported by kiln (`{line}`). "
            "Remove it from the image definition."
        )
    if instruction not in CONFIG_ONLY | FILESYSTEM:
        raise ImageBuildError(
            f"Unknown Dockerfile instruction {keyword!r} in `{line}`. "
            "Valid instructions: FROM, RUN, COPY, ADD, ENV, WORKDIR, CMD, ENTRYPOINT, SHELL, USER, ARG, "
            "LABEL, EXPOSE, VOLUME, STOPSIGNAL."
        )
    if instruction in ("RUN", "COPY") and re.search(r"(?<!<)<<(?!<)-?\s*[\"']?\w+", argument):
        raise ImageBuildError(f"Heredocs in RUN are not supported by kiln (`{line}`): use `run_commands`.")
    return Step(instruction, argument)


def parse_from(argument: str) -> tuple[str, str]:
    """`FROM [--platform=…] image[:tag] [AS name]` → (image, stage name or "")."""
    words = [w for w in argument.split() if not w.startswith("--")]
    if not words:
        raise ImageBuildError(f"`FROM {argument}` names no image")
    if len(words) == 3 and words[1].upper() == "AS":
        return words[0], words[2]
    if len(words) != 1:
        raise ImageBuildError(f"`FROM {argument}`: expected `FROM image [AS name]`")
    return words[0], ""


def split_flags(argument: str) -> tuple[dict[str, str], str]:
    """`--from=a --chown=1:1 src dst` → ({"from": "a", "chown": "1:1"}, "src dst")."""
    flags: dict[str, str] = {}
    rest = argument.strip()
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return flags, rest


def parse_arg(argument: str) -> tuple[str, str | None]:
    """`ARG NAME=default` → ("NAME", "default"); `ARG NAME` → ("NAME", None)."""
    name, sep, default = argument.strip().partition("=")
    if not name or " " in name:
        raise ImageBuildError(f"`ARG {argument}`: expected `ARG NAME` or `ARG NAME=default`")
    return name, _unquote_and_expand(default, {}) if sep else None


def json_or_shell_form(argument: str) -> list[str] | None:
    """`["a", "b"]` → ['a', 'b']; anything else → None (shell form)."""
    if argument.startswith("["):
        try:
            value = json.loads(argument)
        except json.JSONDecodeError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return None


def apply_config_step(config: ImageConfig, step: Step, args: dict[str, str] | None = None) -> None:
    """Apply a config-changing instruction (ENV, CMD, …; WORKDIR too) to `config` in place.

    `args` are the build arguments (ARG) in scope: they expand like variables of the env.
    """
    arg = step.argument
    scope = {**(args or {}), **config.env}
    if step.instruction == "ENV":
        config.env.update(parse_env(arg, scope))
    elif step.instruction == "WORKDIR":
        path = expand(arg, scope)
        config.workdir = path if path.startswith("/") else f"{config.workdir or '/'}".rstrip("/") + "/" + path
    elif step.instruction in ("CMD", "ENTRYPOINT"):
        form = json_or_shell_form(arg)
        command = form if form is not None else [*config.shell, arg]
        if step.instruction == "CMD":
            config.cmd = command
        else:
            config.entrypoint = command
    elif step.instruction == "SHELL":
        form = json_or_shell_form(arg)
        if form is None:
            raise ImageBuildError(
                f'SHELL needs the JSON form, e.g. SHELL ["/bin/bash", "-c"] (got `{step.text}`)'
            )
        config.shell = form
    elif step.instruction == "USER":
        config.user = arg
    # ARG, LABEL, EXPOSE, VOLUME, STOPSIGNAL: recorded in the layer key, nothing to apply.


def parse_env(argument: str, env: dict[str, str]) -> dict[str, str]:
    """`ENV A=1 B="two words"` or the legacy `ENV A value with spaces`.

    Values expand $VAR from the env as it was before this instruction; single quotes keep a
    value literal, as in a Dockerfile.
    """
    words = _WORD.findall(argument)
    if not words:
        raise ImageBuildError("ENV needs at least one KEY=value")
    if "=" not in words[0]:
        key, _, value = argument.partition(" ")
        return {key: _unquote_and_expand(value.strip(), env)}
    result: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ImageBuildError(f"ENV expects KEY=value pairs, got {word!r} in `ENV {argument}`")
        result[key] = _unquote_and_expand(value, env)
    return result


_WORD = re.compile(r"""(?:[^\s"']+|"(?:\\.|[^"\\])*"|'[^']*')+""")
_SEGMENT = re.compile(r"""'([^']*)'|"((?:\\.|[^"\\])*)"|([^'"]+)""")


def _unquote_and_expand(value: str, env: dict[str, str]) -> str:
    """Shell-like: 'single' is literal, "double" and bare text expand $VAR."""
    out = []
    for single, double, bare in _SEGMENT.findall(value):
        if single:
            out.append(single)
        elif double:
            out.append(expand(re.sub(r"\\(.)", r"\1", double), env))
        else:
            out.append(expand(bare, env))
    return "".join(out)


def expand(value: str, env: dict[str, str]) -> str:
    """Expand $VAR, ${VAR} and ${VAR:-default} from the image's env, as Dockerfile ENV/WORKDIR do."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        found = env.get(name, "")
        return found if found or default is None else default

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", replace, value)
