"""Layer keys: a pure function of what a layer is made of."""

from kiln.images.keys import layer_key


def test_same_inputs_give_the_same_key() -> None:
    a = layer_key("p" * 64, "RUN echo hi", {"context": "abc", "secrets": "st-1"})
    b = layer_key("p" * 64, "RUN echo hi", {"context": "abc", "secrets": "st-1"})
    assert a == b


def test_key_is_a_sha256_hex_digest() -> None:
    key = layer_key(None, "BASE python")
    assert len(key) == 64
    int(key, 16)


def test_key_ignores_the_order_of_inputs() -> None:
    forward = layer_key("parent", "COPY . /app", {"a": "1", "b": "2", "c": "3"})
    backward = layer_key("parent", "COPY . /app", {"c": "3", "b": "2", "a": "1"})
    assert forward == backward


def test_key_depends_on_the_parent() -> None:
    assert layer_key("parent-1", "RUN x") != layer_key("parent-2", "RUN x")


def test_no_parent_differs_from_a_parent() -> None:
    assert layer_key(None, "RUN x") != layer_key("p", "RUN x")


def test_key_depends_on_the_step() -> None:
    assert layer_key("p", "RUN echo a") != layer_key("p", "RUN echo b")


def test_key_depends_on_input_values_and_names() -> None:
    base = layer_key("p", "COPY . /", {"context": "d1"})
    assert base != layer_key("p", "COPY . /", {"context": "d2"})
    assert base != layer_key("p", "COPY . /", {"other": "d1"})
    assert base != layer_key("p", "COPY . /")


def test_no_inputs_equals_empty_inputs() -> None:
    assert layer_key("p", "RUN x") == layer_key("p", "RUN x", {})


def test_parent_step_boundary_is_unambiguous() -> None:
    # Moving text between the parent and the step must not collide.
    assert layer_key("ab", "c") != layer_key("a", "bc")
