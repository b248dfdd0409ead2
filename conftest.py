"""The checkout's pytest setup: mechbench's plugin (mechbench/pytest_plugin.py) holds the options, fixtures and
helpers of the claim suites and the library tests. It is a ``pytest11`` entry point of the installed package (every
pytest of mechbench's environment loads it); naming it here too keeps the checkout's suites running where entry
points are not loaded (PYTEST_DISABLE_PLUGIN_AUTOLOAD, or a .venv installed before the entry point), and is a
no-op where they are (the entry point has the module's name). A pytest outside mechbench's environment (the
system's, without torch) stops with how to run it, instead of an import traceback."""

try:  # the packages the plugin needs, imported here so that their absence is a message, not pytest's traceback
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError as missing:
    _MISSING = missing

    def pytest_configure(config):
        import pytest

        raise pytest.UsageError(
            f"mechbench's environment is not the one running this pytest ({_MISSING}). Run the README's commands, "
            f"which make it on first use: `bash scripts/claims.sh` (the claims) or `bash scripts/tests.sh` (the "
            f"library tests), or `.venv/bin/python -m pytest ...` after `bash scripts/setup-venv.sh`."
        )
else:
    # pytester: the plugin's own tests (tests/test_plugin.py)
    pytest_plugins = ("mechbench.pytest_plugin", "pytester")
