"""The chanbox command line (a channel client of the engine); the engine issue fills it."""

import click


@click.group()
def main() -> None:
    """chanbox: containers driven over channels."""
