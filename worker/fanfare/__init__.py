"""Fanfare's webhook contract: signature, envelope, event translation."""
