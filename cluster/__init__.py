"""Cluster side of ric: model stores, protocol codecs, the Ingress, the app builder and the CLI."""
