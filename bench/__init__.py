"""Benchmarks of the saga engine against the plain-ORM and plain-psycopg floors and DBOS."""
