"""What a model reports and how it is told.

``statistics`` keeps Triton's per-version statistics and reports them to the application's collector,
with ``host_usage`` (a node's CPU, memory and GPU samples); ``tracing`` opens OpenTelemetry spans by
Triton's trace settings (``trace_settings``); ``log_settings`` is Triton's logging extension;
``settings_follower`` keeps every replica process on the application's current log and trace settings.
May import ``deployments.errors`` only; no Ray (the reporter and follower are given their Serve handles).
"""
