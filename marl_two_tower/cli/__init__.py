"""Command-line interface: ``marl-two-tower <command> --help``.

:mod:`.main` holds the parser and the model commands, :mod:`.study` the study
commands (ablate, report, simulate), :mod:`.common` the pieces they share.
"""
