"""The commands for people: `hostwatch check`, `hostwatch status` and `hostwatch events`.

Each module has a `main(argv) -> int` that parses its own arguments and returns the exit code;
`hostwatch.cli` dispatches on the first argument. See docs/cli.md.
"""

__all__: list[str] = []
