"""``python -m pycomex_index`` runs the same CLI as ``pycomex-index``."""

from pycomex_index.cli import main

if __name__ == "__main__":  # not when a multiprocessing server imports the main module again
    main()
