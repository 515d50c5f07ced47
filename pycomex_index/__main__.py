"""``python -m pycomex_index`` runs the same CLI as ``pycomex-index``."""

from pycomex_index.cli import main

main()
