"""The tests' shared helpers (fixtures live in the conftest.py files).

pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in pyproject.toml; mypy's ``mypy_path``
says the same), so a test imports them as ``from support.helpers import Server`` or
``from support import charge_kit as kit``.
"""
