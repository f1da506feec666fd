"""`python -m ranet_client` runs the CLI (for environments without the console script on PATH)."""

from ranet_client.cli import app

app()
