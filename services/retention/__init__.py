"""Retention: knows every record's lifecycle; destroys by archive rule."""
