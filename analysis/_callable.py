"""Let a module be called like its main function, so `analysis.load(paths)` and
`analysis.compare.write_compare(...)` both work (a package cannot hold a function and a
submodule under one name otherwise)."""
import sys
import types


def make_module_callable(module_name: str, func) -> None:
    """Calling module `module_name` calls `func`."""

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return func(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
