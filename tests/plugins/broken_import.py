"""A plugin module that fails while it is imported (tests/test_plugin_model_data.py): the error names it."""

raise RuntimeError("this module is broken on purpose")
