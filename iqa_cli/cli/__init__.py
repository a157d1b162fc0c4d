"""The `iqa` command line: one module per command, torch imported only inside command bodies."""
