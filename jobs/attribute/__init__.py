"""Attribute: from a broken metric to the commits that could have caused it, ranked with evidence."""
