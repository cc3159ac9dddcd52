"""Planning: layer keys are computed from the recipe alone, and change exactly when they should."""

from pathlib import Path

import pytest

from kiln.errors import ImageBuildError
from kiln.images.base import BaseResolver
from kiln.images.context import BuildContext
from kiln.images.planner import BuildFunction, Plan, Recipe, plan

PARENT = "p" * 64


@pytest.fixture
def bases(tmp_path: Path) -> BaseResolver:
    return BaseResolver(tmp_path, pythons={})


def keys(bases: BaseResolver, lines: list[str], **recipe: object) -> list[str]:
    result = plan(Recipe(dockerfile=lines, parent_key=PARENT, **recipe), bases)  # type: ignore[arg-type]
    return [layer.key for layer in result.layers]


def context(**files: str) -> BuildContext:
    return BuildContext(digests=dict(files))


def test_planning_is_deterministic(bases: BaseResolver) -> None:
    lines = ["FROM base", "RUN echo a", "ENV A=1", "RUN echo b"]
    assert keys(bases, lines) == keys(bases, lines)
    assert len(set(keys(bases, lines))) == 3


def test_a_changed_step_changes_itself_and_what_follows_only(bases: BaseResolver) -> None:
    before = keys(bases, ["FROM base", "RUN one", "RUN two", "RUN three"])
    after = keys(bases, ["FROM base", "RUN one", "RUN TWO", "RUN three"])
    assert before[0] == after[0]
    assert before[1] != after[1] and before[2] != after[2]


def test_copy_key_covers_only_the_files_its_sources_match(bases: BaseResolver) -> None:
    lines = ["FROM base", "COPY a.txt /a", "COPY pkg /pkg"]
    one = keys(bases, lines, context=context(**{"a.txt": "1", "pkg/m.py": "2", "other": "3"}))
    other_changed = keys(bases, lines, context=context(**{"a.txt": "1", "pkg/m.py": "2", "other": "X"}))
    pkg_changed = keys(bases, lines, context=context(**{"a.txt": "1", "pkg/m.py": "X", "other": "3"}))
    assert one == other_changed
    assert one[0] == pkg_changed[0] and one[1] != pkg_changed[1]


def test_copy_globs_and_whole_context(bases: BaseResolver) -> None:
    ctx = context(**{"a.py": "1", "b.txt": "2", "sub/c.py": "3"})
    assert set(ctx.subset(["*.py"]).digests) == {"a.py"}
    assert set(ctx.subset(["."]).digests) == {"a.py", "b.txt", "sub/c.py"}
    assert set(ctx.subset(["/sub"]).digests) == {"sub/c.py"}
    assert set(ctx.subset(["s*"]).digests) == {"sub/c.py"}


def test_build_args_and_secrets_enter_run_keys(bases: BaseResolver) -> None:
    lines = ["FROM base", "ARG VERSION=1", "RUN echo $VERSION"]
    default = keys(bases, lines)
    assert keys(bases, lines, build_args={"VERSION": "2"}) != default
    assert keys(bases, lines, build_args={"UNDECLARED": "2"}) == default
    assert keys(bases, lines, secret_digest="abc") != default


def test_ignore_cache_gives_new_keys(bases: BaseResolver) -> None:
    lines = ["FROM base", "RUN echo"]
    assert keys(bases, lines, ignore_cache_nonce="n1") != keys(bases, lines)


def test_copy_from_a_stage_reads_that_stage(bases: BaseResolver) -> None:
    lines = ["FROM base AS build", "RUN make", "FROM base", "COPY --from=build /out /app"]
    result = plan(Recipe(dockerfile=lines, parent_key=PARENT), bases)
    run, copy = result.layers
    assert copy.copy_from == run.key
    assert copy.parent == PARENT
    assert result.top_key == copy.key


def test_copy_from_an_image_plans_that_image(bases: BaseResolver) -> None:
    result = plan(
        Recipe(
            dockerfile=["FROM base", "COPY --from=ghcr.io/astral-sh/uv:0.8.0 /uv /.uv/uv"], parent_key=PARENT
        ),
        bases,
    )
    uv, copy = result.layers
    assert uv.label == "base: uv-wheel:0.8.0" and uv.parent is None
    assert copy.copy_from == uv.key and copy.parent == PARENT
    assert any("uv==0.8.0 wheel" in notice for notice in result.notices)


def test_registry_images_are_planned_without_the_network(bases: BaseResolver) -> None:
    result = plan(Recipe(dockerfile=["FROM 127.0.0.1:1/nothing/here:1", "RUN true"]), bases)
    base, _ = result.layers
    assert base.label == "base: registry:127.0.0.1:1/nothing/here:1"
    assert base.base is not None and base.base.refresh


def test_scratch_and_an_image_of_only_its_parent(bases: BaseResolver) -> None:
    scratch = plan(Recipe(dockerfile=["FROM scratch"]), bases)
    assert [layer.label for layer in scratch.layers] == ["base: scratch"]
    unchanged: Plan = plan(Recipe(dockerfile=["FROM base"], parent_key=PARENT), bases)
    assert unchanged.layers == [] and unchanged.top_key == PARENT


def test_build_function_identity_is_the_key(bases: BaseResolver) -> None:
    async def run(parent: str, upper: Path, log: object) -> None: ...

    def step(arguments: str) -> list[str]:
        function = BuildFunction("f", {"source": "s", "arguments": arguments}, run)
        return keys(bases, [], build_function=function)

    assert step("a") == step("a")
    assert step("a") != step("b")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ADD https://example.com/x.tar /x", "URLs"),
        ("ADD archive.tar.gz /x", "archives"),
        ("COPY onlyone", "source and a destination"),
    ],
)
def test_refused_steps_say_why(bases: BaseResolver, line: str, message: str) -> None:
    with pytest.raises(ImageBuildError, match=message):
        keys(bases, ["FROM base", line])


def test_the_first_instruction_must_be_from(bases: BaseResolver) -> None:
    with pytest.raises(ImageBuildError, match="FROM"):
        plan(Recipe(dockerfile=["RUN true"]), bases)


def test_stages_are_numbered_from_the_first_from(bases: BaseResolver) -> None:
    lines = ["FROM base", "RUN make", "FROM base", "COPY --from=0 /out /app"]
    result = plan(Recipe(dockerfile=lines, parent_key=PARENT), bases)
    run, copy = result.layers
    assert copy.copy_from == run.key
