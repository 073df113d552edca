"""What every part of the engine shares: the clock, errors, records, formatting, masking and report shapes."""
