"""The farm's services: database, storage, queue, node registry, events, embedded Redis, checks."""
