"""A tiny bookshop API that serves a SQLite file built offline."""
