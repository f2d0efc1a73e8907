"""The running service: twistd options and service tree, settings, workers, shutdown, observability."""
