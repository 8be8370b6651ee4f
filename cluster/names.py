"""The names an application's parts go by in Serve, shared by the builder, the repository machinery, the
``ric`` command line and clients of other Ray jobs. Imports nothing."""

#: The application ``ric serve`` deploys (and the one tests and clients use unless told otherwise).
APP_NAME = "ric"
INGRESS_NAME = "ric-ingress"
STATISTICS_NAME = "ric-statistics"
SYNC_NAME = "ric-sync"
#: Deployment names a model may not take.
RESERVED_NAMES = (INGRESS_NAME, STATISTICS_NAME, SYNC_NAME)
#: A model loaded after the build runs as the application ``<app>-model-<model>``.
MODEL_APP_SEPARATOR = "-model-"


def model_app_name(parent: str, model: str) -> str:
    return f"{parent}{MODEL_APP_SEPARATOR}{model}"
