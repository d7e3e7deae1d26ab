"""``python -m edgevae``: the command line, also as torchrun starts it (``torchrun ... -m edgevae train``)."""

from edgevae.cli import main

if __name__ == "__main__":
    main()
