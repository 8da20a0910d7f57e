import importlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from loops_webhooks.handlers import HandlerContext, RegistrationError, Reject, Router
from loops_webhooks.handlers.context import idempotency_key
from loops_webhooks.handlers.events import CheckoutSessionEvent
from loops_webhooks.workers.dead_letters import DeadLetterReason, build_dead_letter
from loops_webhooks.workers.registry import DEFAULT_HANDLERS, HandlerLoadError, load_router

REPO_ROOT = Path(__file__).resolve().parents[2]

WriteModule = Callable[[str], str]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Write a throwaway module under a unique name and return that name."""
    monkeypatch.syspath_prepend(tmp_path)
    written: list[str] = []

    def write(source: str) -> str:
        name = f"loops_test_handlers_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


HANDLERS_NAMED = """
    from loops_webhooks.handlers import Router

    router = Router()

    @router.on("*", name={name!r})
    async def handle(event, ctx):
        pass
"""


def test_the_default_spec_loads_the_example_handlers() -> None:
    router = load_router(DEFAULT_HANDLERS)

    assert [(handler.pattern, handler.name) for handler in router.handlers] == [
        ("checkout.session.completed", "loops_webhooks.handlers.examples:fulfil_order"),
        ("checkout.session.expired", "loops_webhooks.handlers.examples:release_order"),
        ("checkout.session.failed", "loops_webhooks.handlers.examples:note_failed_payment"),
    ]


def test_the_default_spec_is_the_examples_router() -> None:
    assert DEFAULT_HANDLERS == "loops_webhooks.handlers.examples:router"


def test_comma_separated_specs_are_combined_in_the_order_given(write_module: WriteModule) -> None:
    first = write_module(HANDLERS_NAMED.format(name="first"))
    second = write_module(HANDLERS_NAMED.format(name="second"))

    router = load_router(f"{second}:router, {first}:router")

    assert [handler.name for handler in router.handlers] == ["second", "first"]


def test_loading_leaves_the_imported_router_unchanged(write_module: WriteModule) -> None:
    module = write_module(HANDLERS_NAMED.format(name="only"))

    loaded = load_router(f"{module}:router")

    original = sys.modules[module].router
    assert loaded is not original
    assert loaded.handlers == original.handlers


def test_a_router_nested_in_an_attribute_path_is_found(write_module: WriteModule) -> None:
    module = write_module(
        """
        from types import SimpleNamespace
        from loops_webhooks.handlers import Router

        webhooks = SimpleNamespace(router=Router())
        """
    )

    assert load_router(f"{module}:webhooks.router").handlers == ()


@pytest.mark.parametrize(
    "spec",
    [
        "loops_webhooks.handlers.examples",
        "loops_webhooks.handlers.examples:",
        ":router",
        "loops_webhooks.handlers.examples.router",
    ],
)
def test_a_spec_without_module_and_attribute_is_rejected(spec: str) -> None:
    with pytest.raises(HandlerLoadError, match=f"{spec!r} is not of the form 'module:attribute'"):
        load_router(spec)


@pytest.mark.parametrize("spec", ["", "  "])
def test_an_empty_spec_is_rejected(spec: str) -> None:
    with pytest.raises(HandlerLoadError, match="handlers spec is empty"):
        load_router(spec)


@pytest.mark.parametrize("spec", ["loops_webhooks.handlers.examples:router,", "a:b,,c:d"])
def test_a_spec_with_an_empty_entry_is_rejected(spec: str) -> None:
    with pytest.raises(HandlerLoadError, match="has an empty entry"):
        load_router(spec)


def test_a_module_that_cannot_be_imported_is_reported_with_its_cause() -> None:
    with pytest.raises(HandlerLoadError) as caught:
        load_router("no_such_module_for_loops:router")

    assert str(caught.value) == (
        "cannot load handlers 'no_such_module_for_loops:router': importing "
        "'no_such_module_for_loops' failed: ModuleNotFoundError: "
        "No module named 'no_such_module_for_loops'"
    )
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_a_registration_error_raised_while_importing_is_reported(
    write_module: WriteModule,
) -> None:
    module = write_module(
        """
        from loops_webhooks.handlers import Router

        router = Router()

        @router.on("*", max_attempt=3)
        async def handle(event, ctx):
            pass
        """
    )

    with pytest.raises(HandlerLoadError, match=r"RegistrationError: .*did you mean") as caught:
        load_router(f"{module}:router")
    assert isinstance(caught.value.__cause__, RegistrationError)


def test_a_multi_line_import_error_is_reported_on_one_line(write_module: WriteModule) -> None:
    module = write_module('raise RuntimeError("first line\\nsecond line")')

    with pytest.raises(HandlerLoadError) as caught:
        load_router(f"{module}:router")

    assert str(caught.value).endswith("RuntimeError: first line")


def test_a_module_that_exits_at_import_is_reported_as_an_import_failure(
    write_module: WriteModule,
) -> None:
    module = write_module("import sys\nsys.exit(7)")

    with pytest.raises(HandlerLoadError) as caught:
        load_router(f"{module}:router")

    assert str(caught.value).endswith(f"importing {module!r} failed: SystemExit: 7")


def test_a_missing_attribute_is_reported(write_module: WriteModule) -> None:
    module = write_module("from loops_webhooks import Router\n")

    with pytest.raises(HandlerLoadError, match=f"{module!r} has no attribute 'router'") as caught:
        load_router(f"{module}:router")
    assert isinstance(caught.value.__cause__, AttributeError)


def test_an_attribute_that_is_not_a_router_is_reported(write_module: WriteModule) -> None:
    module = write_module("router = {}\n")

    with pytest.raises(HandlerLoadError, match=r"'router' is a dict, not a loops_webhooks\.Router"):
        load_router(f"{module}:router")


def test_a_name_clash_between_specs_is_reported(write_module: WriteModule) -> None:
    first = write_module(HANDLERS_NAMED.format(name="fulfil"))
    second = write_module(HANDLERS_NAMED.format(name="fulfil"))

    with pytest.raises(HandlerLoadError, match=f"'{second}:router'.*named 'fulfil'") as caught:
        load_router(f"{first}:router,{second}:router")
    assert isinstance(caught.value.__cause__, RegistrationError)


def test_a_handler_load_error_is_a_value_error() -> None:
    assert issubclass(HandlerLoadError, ValueError)


def test_importing_the_handler_api_and_the_testing_kit_loads_no_aiohttp_arq_or_redis() -> None:
    script = (
        "import sys, loops_webhooks.handlers.examples\n"
        "from loops_webhooks import Router, HandlerContext, Reject, RetryLater, RegistrationError\n"
        "from loops_webhooks.events import Event, CheckoutSessionEvent, CheckoutSession\n"
        "import loops_webhooks.testing, loops_webhooks.handlers.testing\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'aiohttp', 'arq', 'redis'}))"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


def example_context(handler: str) -> HandlerContext:
    return HandlerContext(
        event_id="evt_abc123",
        event_type="checkout.session.completed",
        handler=handler,
        attempt=1,
        idempotency_key=idempotency_key("evt_abc123", handler),
        received_at=datetime(2025, 1, 15, 10, 35, tzinfo=UTC),
        log=structlog.get_logger(),
    )


def completed_event(metadata: dict[str, str]) -> CheckoutSessionEvent:
    return CheckoutSessionEvent.model_validate(
        {
            "id": "evt_abc123",
            "type": "checkout.session.completed",
            "created": "2025-01-15T10:35:00Z",
            "data": {"id": "cs_abc123", "status": "completed", "metadata": metadata},
        }
    )


def example_router() -> Router:
    return load_router(DEFAULT_HANDLERS)


async def test_the_example_fulfilment_logs_the_order_it_fulfilled() -> None:
    handler = example_router().handlers_for("checkout.session.completed")[0]

    with capture_logs() as logs:
        await handler.func(completed_event({"orderId": "order_456"}), example_context(handler.name))

    assert logs == [
        {
            "event": "order fulfilled",
            "log_level": "info",
            "order_id": "order_456",
            "checkout_session_id": "cs_abc123",
        }
    ]


async def test_the_example_fulfilment_rejects_a_session_without_an_order_id() -> None:
    handler = example_router().handlers_for("checkout.session.completed")[0]

    with pytest.raises(Reject, match="cs_abc123 has no orderId"):
        await handler.func(completed_event({}), example_context(handler.name))


async def test_a_stored_traceback_shows_the_lines_that_ran_after_the_module_file_was_edited(
    write_module: WriteModule, tmp_path: Path
) -> None:
    """A fix saved while the worker still runs the old code: the dead letter's traceback
    must show the line that raised, not the fixed line beside the old error."""
    name = write_module(
        """
        from loops_webhooks.handlers import Router

        router = Router()

        @router.on("*", name="sync_crm")
        async def sync_crm(event, ctx):
            crm_answer = {}
            return crm_answer["customer"]
        """
    )
    [handler] = load_router(f"{name}:router").handlers
    module_file = tmp_path / f"{name}.py"
    module_file.write_text(
        module_file.read_text().replace(
            'crm_answer["customer"]', 'crm_answer.get("customer", "the fix, which never ran")'
        )
    )

    with pytest.raises(KeyError) as raised:
        await handler.func(None, None)  # type: ignore[arg-type]
    letter = build_dead_letter(
        DeadLetterReason.MAX_ATTEMPTS, now_ms=1, event_id="evt_1", error=raised.value
    )

    assert 'return crm_answer["customer"]' in letter.traceback
    assert "never ran" not in letter.traceback
