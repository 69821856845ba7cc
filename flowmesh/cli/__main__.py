"""``python -m flowmesh.cli`` runs the ``flowmesh`` command."""

from flowmesh.cli import main

main()
