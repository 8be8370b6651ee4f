"""Ensembles: Triton's ``ensemble_scheduling`` as Serve deployment graphs."""
