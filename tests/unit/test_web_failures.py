"""What an HTTP client gets when a web function ends without a response."""

from __future__ import annotations

from kiln.core.calls import Output
from kiln.core.results import Result, Status
from kiln.frontends.modal.web import failure_page


def output(status: Status, task_id: str, message: str = "ValueError('the secret reason')") -> Output:
    return Output("in-1", 0, Result(status, message), 0, task_id, 0.0, 0.0)


def test_a_function_that_raised_in_its_container_is_a_500_without_its_exception() -> None:
    status, text = failure_page(output(Status.FAILURE, "ta-1"), "my-app")
    assert status == 500
    assert "secret reason" not in text and "modal app logs my-app" in text


def test_an_input_failed_before_any_container_took_it_is_a_502() -> None:
    # A web_server whose port never opened (or an @enter that raised) fails the queued inputs.
    assert failure_page(output(Status.FAILURE, ""), "my-app")[0] == 502
    assert failure_page(output(Status.INIT_FAILURE, "ta-1"), "my-app")[0] == 502


def test_timeouts_and_stopped_calls_have_their_own_statuses() -> None:
    assert failure_page(output(Status.TIMEOUT, "ta-1"), "my-app")[0] == 504
    assert failure_page(output(Status.TERMINATED, "ta-1"), "my-app")[0] == 503
    assert failure_page(None, "my-app")[0] == 500
