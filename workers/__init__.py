"""Example apps. ``flowmesh worker --app-id X`` loads ``workers/<X with - as _>.py``."""
