"""``python -m service``: the same command line as the ``modelreg`` script."""

from service.cli.main import main

if __name__ == "__main__":
    main()
