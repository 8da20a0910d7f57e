"""Finding the user's handlers: turning ``LOOPS_HANDLERS`` into one `Router`."""

import importlib
import linecache
import sys
import sysconfig
import tokenize
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from loops_webhooks.handlers import RegistrationError, Router

__all__ = ["DEFAULT_HANDLERS", "HandlerLoadError", "load_router"]

DEFAULT_HANDLERS = "loops_webhooks.handlers.examples:router"


class HandlerLoadError(ValueError):
    """The handlers spec could not be turned into a router; the worker must not start.

    ``while_importing`` is the exception a handler module raised while it was imported (its
    traceback shows the file and line to fix); None when the failure is elsewhere, e.g. the
    module itself is not found.
    """

    def __init__(self, message: str, *, while_importing: BaseException | None = None) -> None:
        super().__init__(message)
        self.while_importing = while_importing


def load_router(spec: str) -> Router:
    """Import every ``module:attribute`` in the comma-separated `spec` and combine them.

    Each attribute must be a `Router`; their handlers are included in the order given, into a
    new router, so the imported routers are left as they were. Any failure raises
    `HandlerLoadError` with a one-line message naming the failing part of the spec, chained to
    the original exception.
    """
    if not spec.strip():
        raise HandlerLoadError(f"handlers spec is empty; expected e.g. {DEFAULT_HANDLERS!r}")
    paths = [path.strip() for path in spec.split(",")]
    if not all(paths):
        raise HandlerLoadError(
            f"handlers spec {spec!r} has an empty entry; expected comma-separated "
            f"'module:attribute' paths such as {DEFAULT_HANDLERS!r}"
        )
    combined = Router()
    loaded_before = set(sys.modules)
    for path in paths:
        try:
            combined.include(_import_router(path))
        except RegistrationError as exc:
            raise HandlerLoadError(f"cannot load handlers {path!r}: {exc}") from exc
    handler_modules = {
        sys.modules.get(getattr(handler.func, "__module__", "")) for handler in combined.handlers
    }
    new_modules = {module for name, module in sys.modules.items() if name not in loaded_before}
    _keep_sources_as_loaded(
        module for module in handler_modules | new_modules if module is not None
    )
    return combined


def _keep_sources_as_loaded(modules: Iterable[ModuleType]) -> None:
    """Pin the source of the shop's modules in ``linecache`` as it is now, just imported.

    Formatting a traceback calls ``linecache.checkcache``, which drops a file whose size or
    mtime changed, and the line is then read from the edited file: a dead letter's traceback
    would show a line that never ran beside the error of the code that did. An entry without
    an mtime is never checked (linecache's own form for a source a loader supplied), so the
    lines stay those that were imported. Installed packages and the standard library are
    left alone: they change only with a deploy, which restarts the worker.
    """
    installed = tuple(
        sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")
    )
    for module in modules:
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py") or path.startswith(installed):
            continue
        try:
            with tokenize.open(path) as source:
                lines = source.readlines()
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        linecache.cache[path] = (sum(len(line) for line in lines), None, lines, path)


def _import_router(path: str) -> Router:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise HandlerLoadError(
            f"handlers spec {path!r} is not of the form 'module:attribute', "
            f"e.g. {DEFAULT_HANDLERS!r}"
        )
    try:
        found: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # a module calling sys.exit() at import, too
        missing = isinstance(exc, ModuleNotFoundError) and _is_module_or_parent(
            exc.name, module_name
        )
        raise HandlerLoadError(
            f"cannot load handlers {path!r}: importing {module_name!r} failed: "
            f"{type(exc).__name__}: {_first_line(exc)}",
            while_importing=None if missing else exc,
        ) from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as exc:
            raise HandlerLoadError(
                f"cannot load handlers {path!r}: {module_name!r} has no attribute {attribute!r}"
            ) from exc
    if not isinstance(found, Router):
        raise HandlerLoadError(
            f"cannot load handlers {path!r}: {attribute!r} is a {type(found).__name__}, "
            "not a loops_webhooks.Router"
        )
    return found


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else ""


def _is_module_or_parent(name: str | None, module_name: str) -> bool:
    """Whether the module not found is the one named in the spec (or a package above it), as
    opposed to something that module imports."""
    return name is not None and (module_name == name or module_name.startswith(name + "."))
