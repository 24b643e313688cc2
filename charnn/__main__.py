"""`python -m charnn` runs the CLI."""

from charnn.cli.commands import main

if __name__ == "__main__":
    main()
