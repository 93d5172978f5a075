"""Pure domain: reservation states, rules and decisions. No I/O here."""
