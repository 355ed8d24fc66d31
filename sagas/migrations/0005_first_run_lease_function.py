"""``l2c_saga_not_new(saga)``: raises, for the statement that takes a new saga's lease with its
first step (``sagas.fastpath``). Plain SQL has no way to fail a statement on a condition; a
PL/pgSQL function that raises does, and its SQLSTATE and message say what happened."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION l2c_saga_not_new(saga uuid) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'saga % is no longer new, or its lease is held', saga
        USING ERRCODE = 'L2C01';
END
$$
"""
DROP = "DROP FUNCTION IF EXISTS l2c_saga_not_new(uuid)"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("sagas", "0004_saga_children_without_db_constraint"),
    ]

    operations = [migrations.RunPython(create, drop)]
