"""Persistence: SQLAlchemy 2 models, engine set-up and Alembic migrations (SQLite by default, PostgreSQL
when several people share one service)."""
