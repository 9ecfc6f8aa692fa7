"""The command line's handlers: each turns one subcommand's parsed arguments into library calls and output.

`cli.py` builds the parser and dispatches; nothing below `commands/` parses arguments.
"""
