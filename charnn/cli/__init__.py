"""The command line: the Typer application, its options (read from the config fields), the commands and how
they show results and errors. Thin: each command calls the library. `charnn.cli.commands.main` is the entry.
"""
