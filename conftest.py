"""The checkout's pytest setup: mechbench's plugin (mechbench/pytest_plugin.py) holds the options, fixtures and
helpers of the claim suites and the library tests."""

pytest_plugins = ("mechbench.pytest_plugin", "pytester")  # pytester: the plugin's own tests (tests/test_plugin.py)
