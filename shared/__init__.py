"""The common library of the services: event contracts, messaging, database, telemetry, settings."""
