"""``python -m edgevae.cli``: the command line (as ``python -m edgevae``)."""

from edgevae.cli import main

if __name__ == "__main__":
    main()
