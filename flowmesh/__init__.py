"""flowmesh: durable workflows that span many applications."""
