"""One module per `ranet` command group; each exposes `register(app)`."""
