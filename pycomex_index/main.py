"""The module pycomex imports as this package's plugin (``<package>.main`` of every ``pycomex_*`` package).

It is imported at every pycomex start and in every experiment process, so it
only reads one environment variable and, unless that turns the plugin off,
imports :mod:`pycomex_index.plugin` (standard library and ``pycomex.plugin``
only). pycomex registers every ``Plugin`` subclass it finds here.
Without pycomex, or with a pycomex whose plugin API changed, this module
defines nothing and pycomex-index works on its own.
"""

from __future__ import annotations

import os

if os.environ.get("PYCOMEX_INDEX_PLUGIN", "1").strip().lower() not in ("0", "false", "no", "off"):
    try:
        from pycomex_index.plugin import IndexPlugin  # noqa: F401  (found by pycomex among this module's names)
    except ImportError as _error:
        if not (isinstance(_error, ModuleNotFoundError) and _error.name == "pycomex"):
            import warnings

            warnings.warn(
                f"pycomex-index: its pycomex plugin is off: this pycomex has no plugin API it knows ({_error})",
                RuntimeWarning,
                stacklevel=2,
            )
