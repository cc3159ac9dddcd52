"""Dockerfile parsing and the config-only instructions."""

import pytest

from kiln.errors import ImageBuildError
from kiln.images.steps import ImageConfig, Step, apply_config_step, parse_dockerfile


def apply(config: ImageConfig, *lines: str) -> ImageConfig:
    for step in parse_dockerfile(list(lines)):
        apply_config_step(config, step)
    return config


# -- parse_dockerfile ---------------------------------------------------------------------------


def test_parses_instructions_in_order() -> None:
    steps = parse_dockerfile(["FROM python:3.11-slim", "RUN pip install requests", "ENV A=1"])
    assert steps == [
        Step("FROM", "python:3.11-slim"),
        Step("RUN", "pip install requests"),
        Step("ENV", "A=1"),
    ]


def test_instruction_keywords_are_case_insensitive() -> None:
    steps = parse_dockerfile(["run echo hi", "Workdir /app"])
    assert steps == [Step("RUN", "echo hi"), Step("WORKDIR", "/app")]


def test_argument_is_kept_as_written() -> None:
    (step,) = parse_dockerfile(["RUN   echo  'a  b'   "])
    assert step.argument == "echo  'a  b'"
    assert step.text == "RUN echo  'a  b'"


def test_lines_may_carry_newlines() -> None:
    assert parse_dockerfile(["RUN a\n", "RUN b\n"]) == [Step("RUN", "a"), Step("RUN", "b")]


def test_skips_comments_and_blank_lines() -> None:
    lines = ["# syntax=docker/dockerfile:1", "", "   ", "  # indented comment", "RUN true", ""]
    steps = parse_dockerfile(lines)
    assert steps == [Step("RUN", "true")]


def test_joins_continuation_lines() -> None:
    lines = ["RUN apt-get update && \\", "    apt-get install -y curl \\", "    git", "ENV A=1"]
    steps = parse_dockerfile(lines)
    assert len(steps) == 2
    assert steps[0].instruction == "RUN"
    assert steps[0].argument.split() == ["apt-get", "update", "&&", "apt-get", "install", "-y", "curl", "git"]
    assert steps[1] == Step("ENV", "A=1")


def test_continuation_with_trailing_spaces_after_backslash() -> None:
    steps = parse_dockerfile(["RUN echo a \\   ", "  b"])
    assert [s.argument.split() for s in steps] == [["echo", "a", "b"]]


def test_continuation_on_the_last_line_ends_the_step() -> None:
    steps = parse_dockerfile(["RUN echo a \\"])
    assert [(s.instruction, s.argument.split()) for s in steps] == [("RUN", ["echo", "a"])]


def test_comment_lines_inside_a_continuation_are_dropped() -> None:
    # Docker removes comment lines before joining continuations (Dockerfile reference, "Format").
    steps = parse_dockerfile(["RUN echo hello \\", "# a comment", "world"])
    assert [(s.instruction, s.argument.split()) for s in steps] == [("RUN", ["echo", "hello", "world"])]


def test_unknown_instruction_is_refused_by_name() -> None:
    with pytest.raises(ImageBuildError, match="FROBNICATE"):
        parse_dockerfile(["FROM base", "FROBNICATE now"])


@pytest.mark.parametrize("instruction", ["ONBUILD RUN echo", "HEALTHCHECK CMD true", "MAINTAINER me"])
def test_unsupported_instructions_are_refused_by_name(instruction: str) -> None:
    with pytest.raises(ImageBuildError, match=instruction.split()[0]):
        parse_dockerfile([instruction])


def test_heredoc_run_is_refused() -> None:
    with pytest.raises(ImageBuildError, match=r"(?i)heredoc"):
        parse_dockerfile(["RUN <<EOF", "echo hi", "EOF"])


def test_heredoc_after_a_command_is_refused_as_a_heredoc() -> None:
    # `RUN python3 <<EOF` is a heredoc too; the error should say so, not blame the script's lines.
    with pytest.raises(ImageBuildError, match=r"(?i)heredoc"):
        parse_dockerfile(["RUN python3 <<EOF", "print('hi')", "EOF"])


def test_here_string_style_redirects_in_one_line_are_not_heredocs() -> None:
    assert parse_dockerfile(["RUN cat <<< hi"]) == [Step("RUN", "cat <<< hi")]


# -- ENV ----------------------------------------------------------------------------------------


def test_env_key_value_pairs() -> None:
    config = apply(ImageConfig(), 'ENV A=1 B="two words" C=')
    assert config.env == {"A": "1", "B": "two words", "C": ""}


def test_env_legacy_form_takes_the_rest_of_the_line() -> None:
    config = apply(ImageConfig(), "ENV GREETING hello big world")
    assert config.env == {"GREETING": "hello big world"}


def test_env_expands_earlier_variables() -> None:
    lines = ["ENV PATH=/opt/bin:$PATH", "ENV HOME=/root", "ENV CACHE=${HOME}/.cache"]
    config = apply(ImageConfig(env={"PATH": "/usr/bin"}), *lines)
    assert config.env == {"PATH": "/opt/bin:/usr/bin", "HOME": "/root", "CACHE": "/root/.cache"}


def test_env_legacy_form_expands_variables() -> None:
    config = apply(ImageConfig(env={"PATH": "/usr/bin"}), "ENV PATH /opt/bin:$PATH")
    assert config.env["PATH"] == "/opt/bin:/usr/bin"


def test_env_unknown_variable_expands_to_empty() -> None:
    config = apply(ImageConfig(), "ENV A=x${NOPE}y$NOPE")
    assert config.env["A"] == "xy"


def test_env_later_instruction_overrides() -> None:
    config = apply(ImageConfig(env={"A": "old", "KEEP": "k"}), "ENV A=new")
    assert config.env == {"A": "new", "KEEP": "k"}


def test_env_substitution_uses_values_from_before_the_instruction() -> None:
    # Dockerfile reference, "Environment replacement": with ENV abc=hello, then
    # `ENV abc=bye def=$abc`, def is "hello" (one value per variable for the whole instruction).
    config = apply(ImageConfig(), "ENV abc=hello", "ENV abc=bye def=$abc", "ENV ghi=$abc")
    assert config.env == {"abc": "bye", "def": "hello", "ghi": "bye"}


def test_env_single_quotes_prevent_expansion() -> None:
    config = apply(ImageConfig(env={"HOME": "/root"}), "ENV LITERAL='$HOME'")
    assert config.env["LITERAL"] == "$HOME"


def test_env_without_pairs_is_an_error() -> None:
    with pytest.raises(ImageBuildError):
        apply(ImageConfig(), "ENV A=1 B")


# -- WORKDIR ------------------------------------------------------------------------------------


def test_workdir_absolute() -> None:
    assert apply(ImageConfig(workdir="/old"), "WORKDIR /app").workdir == "/app"


def test_workdir_relative_to_root_when_unset() -> None:
    assert apply(ImageConfig(), "WORKDIR app").workdir == "/app"


def test_workdir_relative_to_previous() -> None:
    assert apply(ImageConfig(), "WORKDIR /a", "WORKDIR b", "WORKDIR c").workdir == "/a/b/c"


def test_workdir_relative_to_previous_with_trailing_slash() -> None:
    assert apply(ImageConfig(workdir="/a/"), "WORKDIR b").workdir == "/a/b"


def test_workdir_expands_env() -> None:
    assert apply(ImageConfig(), "ENV BASE=/srv", "WORKDIR $BASE/app").workdir == "/srv/app"


# -- CMD, ENTRYPOINT, SHELL, USER ----------------------------------------------------------------


def test_cmd_json_form() -> None:
    assert apply(ImageConfig(), 'CMD ["python", "-m", "http.server"]').cmd == ["python", "-m", "http.server"]


def test_cmd_shell_form_runs_through_the_shell() -> None:
    assert apply(ImageConfig(), "CMD echo $HOME && sleep 1").cmd == ["/bin/sh", "-c", "echo $HOME && sleep 1"]


def test_entrypoint_json_and_shell_form() -> None:
    assert apply(ImageConfig(), 'ENTRYPOINT ["/bin/app", "--flag"]').entrypoint == ["/bin/app", "--flag"]
    assert apply(ImageConfig(), "ENTRYPOINT exec app").entrypoint == ["/bin/sh", "-c", "exec app"]


def test_entrypoint_and_cmd_are_independent() -> None:
    config = apply(ImageConfig(), 'ENTRYPOINT ["a"]', 'CMD ["b"]')
    assert (config.entrypoint, config.cmd) == (["a"], ["b"])


def test_malformed_json_falls_back_to_shell_form() -> None:
    assert apply(ImageConfig(), "CMD [not json").cmd == ["/bin/sh", "-c", "[not json"]


def test_shell_sets_the_shell_for_later_shell_forms() -> None:
    config = apply(ImageConfig(), 'SHELL ["/bin/bash", "-lc"]', "CMD echo hi")
    assert config.shell == ["/bin/bash", "-lc"]
    assert config.cmd == ["/bin/bash", "-lc", "echo hi"]


def test_shell_requires_json_form() -> None:
    with pytest.raises(ImageBuildError, match="SHELL"):
        apply(ImageConfig(), "SHELL /bin/bash -c")


def test_user() -> None:
    assert apply(ImageConfig(), "USER nobody").user == "nobody"


@pytest.mark.parametrize("line", ["ARG X=1", "LABEL a=b", "EXPOSE 80", "VOLUME /data", "STOPSIGNAL SIGTERM"])
def test_recorded_only_instructions_leave_the_config_alone(line: str) -> None:
    config = ImageConfig(env={"A": "1"}, workdir="/w", cmd=["c"])
    before = config.to_json()
    apply(config, line)
    assert config.to_json() == before


def test_config_copy_is_independent() -> None:
    config = ImageConfig(env={"A": "1"}, cmd=["x"])
    clone = config.copy()
    apply(clone, "ENV A=2", 'CMD ["y"]')
    assert config.env == {"A": "1"} and config.cmd == ["x"]
    assert ImageConfig.from_json(clone.to_json()) == clone
