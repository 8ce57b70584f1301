"""``chorus-collector``: the central side. Subscribes to many devices' detections over MQTT 5
(shared subscriptions), validates them against the published JSON Schema, de-duplicates by
detection id and stores them in SQLite or PostgreSQL; ``export`` writes CSV.

Needs the ``collector`` extra (paho-mqtt, jsonschema, psycopg); the field agent never imports
this package.
"""
