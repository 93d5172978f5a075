"""`simulate`: a recorded drop decided again under other experience
settings, in scratch databases, and compared with what happened."""
