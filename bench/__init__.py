"""``make bench``: flowmesh against real RabbitMQ and Redis, next to a hand-written floor.

Run ``python -m bench.run`` (see ``bench/README.md``). Nothing here is imported by flowmesh.
"""
